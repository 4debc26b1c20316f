// Keyboard-first review queue (annotation/review.html). The list (#review-queue) is replaced by htmx after
// each decision; the listener lives on the document so it survives the swaps. The current item is the one
// marked .current (the first after every swap); ↓ / ↑ move it.
// The choice is remembered by id and marked data-current as well as .current: htmx "settles" a swapped element's
// class for 20 ms (an item that kept its id gets its old class back, then the server's), which could move .current
// back to the first item between a ↓ and the key that follows it, so the key acted on the wrong item.
(function () {
  const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);
  const ACTION_KEYS = { k: "keep", r: "relabel" };

  function queue() { return document.getElementById("review-queue"); }
  function isMulti() { const q = queue(); return q && q.dataset.multi === "1"; }
  function items() { const q = queue(); return q ? Array.from(q.querySelectorAll(".review-item")) : []; }
  let chosen = null;
  function current() {
    const q = queue();
    if (!q) return null;
    const kept = chosen && document.getElementById(chosen);
    return (kept && q.contains(kept) ? kept : null) || q.querySelector(".review-item.current") || q.querySelector(".review-item");
  }

  // One decision per item at a time: the list is replaced by the answer, and with it this mark.
  function busy(el) { return !el || el.dataset.sent === "1"; }

  function select(el, focus = true) {
    chosen = el ? el.id : null;
    items().forEach((other) => {
      other.classList.toggle("current", other === el);
      if (other === el) other.dataset.current = "1"; else delete other.dataset.current;
    });
    if (el && focus) { el.focus({ preventScroll: true }); el.scrollIntoView({ block: "nearest" }); }
  }

  function move(step) {
    const all = items();
    const at = all.indexOf(current());
    const next = all[Math.min(Math.max(at + step, 0), all.length - 1)];
    if (next) select(next);
  }

  function press(el, button) {
    if (!button || busy(el)) return;
    el.dataset.sent = "1";
    button.click();
  }

  function openComment(el) {
    const form = el.querySelector('form[data-form="comment"]');
    if (!form) return;
    form.hidden = false;
    form.querySelector("textarea").focus();
  }

  document.addEventListener("keydown", (event) => {
    if (event.metaKey || event.altKey || !queue()) return;
    const target = event.target;
    if (TYPING.has(target.tagName)) {
      if (event.key === "Escape") { target.blur(); event.preventDefault(); }
      if (event.key === "Enter" && event.ctrlKey && target.form) { target.form.requestSubmit(); event.preventDefault(); }
      return;
    }
    if (event.ctrlKey) return;
    const el = current();
    if (!el) return;
    if (event.key === "ArrowDown") { event.preventDefault(); move(1); return; }
    if (event.key === "ArrowUp") { event.preventDefault(); move(-1); return; }
    if (ACTION_KEYS[event.key]) {
      event.preventDefault();
      press(el, el.querySelector(`[data-action="${ACTION_KEYS[event.key]}"]`));
      return;
    }
    if (event.key === "c") { event.preventDefault(); openComment(el); return; }
    if (event.key === "Enter" && isMulti()) {
      event.preventDefault();
      press(el, el.querySelector('[data-action="change"]'));
      return;
    }
    if (!event.key || event.key.length !== 1) return;
    const label = el.querySelector(`.label-btn[data-shortcut="${CSS.escape(event.key)}"]`);
    if (!label) return;
    event.preventDefault();
    if (isMulti()) {
      const box = label.querySelector("input[type=checkbox]");
      box.checked = !box.checked;
      label.classList.toggle("checked", box.checked);
    } else {
      press(el, label);
    }
  });

  document.addEventListener("click", (event) => {
    const action = event.target.closest('[data-action="comment"]');
    if (action) { const el = action.closest(".review-item"); if (el) { select(el); openComment(el); } return; }
    const el = event.target.closest(".review-item");
    if (el && !el.classList.contains("current")) select(el);
  });

  document.addEventListener("change", (event) => {
    const box = event.target;
    if (box.type === "checkbox" && box.closest(".review-item")) box.parentElement.classList.toggle("checked", box.checked);
  });

  // A request that failed leaves the same list on screen: allow another try.
  function unmark() { items().forEach((el) => delete el.dataset.sent); }
  document.addEventListener("htmx:responseError", unmark);
  document.addEventListener("htmx:sendError", unmark);
  // After a decision the item is gone and the first one is current; after a comment the same one stays current.
  // Settling restores the server's classes, so the choice is applied again once it is over.
  // Only swaps of the queue itself: the Review tab's count refreshes every 30 s and must not scroll the page.
  // Focus stays where it is when the user is already typing in the current item (a comment opened with c before
  // the settling was over): moving it to the item would turn the rest of the sentence into shortcuts.
  function reselect(event) {
    const target = event.detail && event.detail.target;
    if (target && target.id !== "review-queue") return;
    const el = current();
    if (!el) return;
    const active = document.activeElement;
    select(el, !(active && TYPING.has(active.tagName) && el.contains(active)));
  }
  document.addEventListener("htmx:afterSwap", reselect);
  document.addEventListener("htmx:afterSettle", reselect);
})();
