// htmx wires a swapped-in element's hx-* attributes (its forms' hx-post, its triggers) only when the swap
// "settles", htmx.config.defaultSettleDelay (20 ms) after it. A key pressed inside that window clicked a button
// of a form htmx did not know yet, and the browser posted the form itself: a full page load instead of a swap
// (the server answered it, so nothing was lost, but the page reloaded under the user's hands). Wiring new content
// as soon as it is swapped in closes the window; htmx skips an element it has already processed, so the settle
// step's own pass does nothing more.
document.addEventListener("htmx:afterSwap", (event) => {
  if (window.htmx && event.target instanceof Element && event.target.isConnected) window.htmx.process(event.target);
});
