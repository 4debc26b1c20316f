// The Examples page: "select every example on this page" ticks the rows; "all matching" stands for every
// row of every page, so the row boxes are greyed out while it is ticked. Bound on the document, so rows
// swapped in by htmx (a new filter, a new page) need nothing more.
(() => {
  document.addEventListener("change", (event) => {
    const box = event.target;
    if (!(box instanceof HTMLInputElement)) return;
    const form = box.closest("form");
    if (!form) return;
    if (box.matches("[data-select-page]")) {
      form.querySelectorAll("input[name=ids]").forEach((row) => { row.checked = box.checked; });
    } else if (box.matches("[data-select-all-matching]")) {
      form.querySelectorAll("input[name=ids], input[data-select-page]").forEach((row) => { row.disabled = box.checked; });
    }
  });
})();
