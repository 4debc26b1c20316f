// Keyboard-first labelling. Every key acts on the current #label-item, which htmx
// replaces after each action; the listener lives on the document so it survives swaps.
(function () {
  const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);

  // One action per item: the item element is replaced by the answer, and with it this mark.
  function busy() { const el = item(); return !el || el.dataset.sent === "1"; }
  function markSent() { const el = item(); if (el) el.dataset.sent = "1"; }

  function item() { return document.getElementById("label-item"); }
  function isMulti() { const el = item(); return el && el.dataset.multi === "1"; }

  // A click on the submit button itself, so the form (and htmx) sends that button's label.
  function submitWith(button) {
    if (!button || busy()) return;
    markSent();
    button.click();
  }

  function labelFor(key) {
    const root = item();
    if (!root) return null;
    return root.querySelector(`.label-btn[data-shortcut="${CSS.escape(key)}"]`);
  }

  function openForm(name) {
    const form = item() && item().querySelector(`form[data-form="${name}"]`);
    if (!form) return;
    form.hidden = false;
    const field = form.querySelector("input[type=text], textarea");
    if (field) field.focus();
  }

  const PANELS = { "?": "help-dialog", "g": "guide-dialog" };

  function openPanel() {
    return Object.values(PANELS).map((id) => document.getElementById(id)).find((d) => d && d.open) || null;
  }

  function togglePanel(id) {
    const dialog = document.getElementById(id);
    if (!dialog) return;
    const wasOpen = dialog.open;
    const other = openPanel();
    if (other) other.close();
    if (!wasOpen) dialog.showModal();
  }

  const LINE = 48; // pixels per j / k press: about two lines of the item's text

  // Scroll `box` for a reading key; true when the key was one (and the box can scroll).
  function scrollKey(event, box) {
    if (!box || box.scrollHeight <= box.clientHeight) return false;
    const page = Math.max(box.clientHeight - LINE, LINE);
    const step = {
      j: LINE, ArrowDown: LINE, k: -LINE, ArrowUp: -LINE,
      PageDown: page, PageUp: -page,
      Home: -box.scrollHeight, End: box.scrollHeight,
    }[event.key];
    if (step === undefined) return false;
    box.scrollBy({ top: step, behavior: "auto" });
    return true;
  }

  function clickAction(name) {
    const button = item() && item().querySelector(`[data-action="${name}"]`);
    if (button && !busy()) {
      if (button.type === "submit") markSent();
      button.click();
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.metaKey || event.altKey) return;
    const target = event.target;
    if (TYPING.has(target.tagName)) {
      if (event.key === "Escape") { target.blur(); event.preventDefault(); }
      if (event.key === "Enter" && event.ctrlKey && target.form) { target.form.requestSubmit(); event.preventDefault(); }
      return;
    }
    if (event.ctrlKey) return;
    // `?` the keys, `g` the guidelines and every label's description: each key opens its panel or closes it.
    const panel = PANELS[event.key];
    if (panel && !labelFor(event.key)) {
      togglePanel(panel);
      event.preventDefault();
      return;
    }
    const open = openPanel();
    if (open) {
      // A panel's own text scrolls with the same keys as the item's.
      if (scrollKey(event, open.querySelector(".panel-body") || open)) event.preventDefault();
      return;
    }
    const label = labelFor(event.key);
    if (label) {
      event.preventDefault();
      if (isMulti()) {
        const box = label.querySelector("input[type=checkbox]");
        box.checked = !box.checked;
        label.classList.toggle("checked", box.checked);
      } else {
        submitWith(label);
      }
      return;
    }
    // Long documents: j / k (or the arrows) move the text a few lines, PageDown / PageUp a screen, Home /
    // End to either end. A label whose own key is j or k keeps it (checked above).
    const text = item() && item().querySelector(".item-text");
    if (text && scrollKey(event, text)) { event.preventDefault(); return; }
    switch (event.key) {
      case "Enter": {
        event.preventDefault();
        if (isMulti()) { submitWith(item().querySelector('[data-action="submit"]')); return; }
        const suggested = item() && item().querySelector(".label-btn.suggested");
        if (suggested) submitWith(suggested);
        return;
      }
      case "s": event.preventDefault(); clickAction("skip"); return;
      case "u": event.preventDefault(); clickAction("undo"); return;
      case "f": event.preventDefault(); openForm("flag"); return;
      case "c": event.preventDefault(); openForm("comment"); return;
    }
  });

  document.addEventListener("click", (event) => {
    const action = event.target.closest("[data-action]");
    if (!action || action.type === "submit") return;
    if (action.dataset.action === "flag") openForm("flag");
    if (action.dataset.action === "comment") openForm("comment");
    if (action.dataset.action === "help") togglePanel("help-dialog");
    if (action.dataset.action === "guide") togglePanel("guide-dialog");
  });

  // A request that failed leaves the same item on screen: allow another try.
  function unmark() { const el = item(); if (el) delete el.dataset.sent; }
  document.addEventListener("htmx:responseError", unmark);
  document.addEventListener("htmx:sendError", unmark);

  function markChecked(root) {
    root.querySelectorAll && root.querySelectorAll(".label-btn input:checked")
      .forEach((box) => box.parentElement.classList.add("checked"));
  }
  document.addEventListener("htmx:load", (event) => markChecked(event.detail.elt));
  document.addEventListener("DOMContentLoaded", () => markChecked(document));
})();
