// Span projects' likely mislabels in the review queue (annotation/partials/review-span-item.html). review.js keeps
// ↓/↑ between sentences and k / r / c; this script moves a cursor among the current sentence's spans in question
// (→/←), edits them (a: the model's version; a label's key: that label; x: no entity) and saves the sentence's
// corrected spans (Enter), or takes the model's version of every one at once (A). Edits live on the item until
// saved; the item's data-spans holds the given spans and the questions (start, end, label, model_label).
(function () {
  "use strict";
  const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);

  function queue() { const q = document.getElementById("review-queue"); return q && q.dataset.span === "1" ? q : null; }
  // review.js marks the item it chose data-current (htmx's settling can briefly move the .current class).
  function current() {
    const q = queue();
    return q && (q.querySelector(".review-item[data-current]") || q.querySelector(".review-item.current") || q.querySelector(".review-item"));
  }

  function state(item) {
    if (!item._span) {
      const data = JSON.parse(item.dataset.spans || '{"given": [], "questions": []}');
      item._span = { given: data.given, questions: data.questions, edits: new Map(), cur: 0 };
    }
    return item._span;
  }

  function marks(item, q) { return item.querySelectorAll(`[data-q="${q}"]`); }

  function showCursor(item) {
    const S = state(item);
    item.querySelectorAll(".qcur").forEach((el) => el.classList.remove("qcur"));
    if (!S.questions.length) return;
    marks(item, S.cur).forEach((el) => el.classList.add("qcur"));
  }

  // The sentence's spans with the edits applied: a question edited to a label becomes exactly that span (anything
  // overlapping it goes); edited to "no entity", whatever overlaps it goes.
  function corrected(S) {
    let spans = S.given.map((s) => ({ start: s.start, end: s.end, label: s.label }));
    for (const [q, label] of S.edits) {
      const { start, end } = S.questions[q];
      spans = spans.filter((s) => !(s.start < end && start < s.end));
      if (label) spans.push({ start, end, label });
    }
    return spans.sort((a, b) => a.start - b.start || a.end - b.end);
  }

  function labelInfo(item, key) {
    if (!key) return { name: "no entity", colour: "#888" };
    const button = item.querySelector(`.span-retype[data-key="${CSS.escape(key)}"]`);
    return button ? { name: button.dataset.name, colour: button.dataset.colour } : { name: key, colour: "#888" };
  }

  function edit(item, label) {
    const S = state(item);
    if (!S.questions.length) return;
    S.edits.set(S.cur, label);
    const info = labelInfo(item, label);
    for (const el of marks(item, S.cur)) {
      el.classList.add("fixed");
      if (el.tagName === "MARK") {
        el.style.setProperty("--c", info.colour);
        let tag = el.querySelector(".rs-tag");
        if (!tag) { tag = document.createElement("span"); tag.className = "rs-tag"; el.insertBefore(tag, el.querySelector(".rs-model")); }
        tag.textContent = info.name;
      } else {
        const said = el.querySelector(".q-state");
        if (said) said.textContent = `→ now ${info.name}`;
      }
    }
    const form = item.querySelector('form[data-form="change"]');
    form.querySelector('input[name="spans"]').value = JSON.stringify(corrected(S));
    form.querySelector('[data-action="change"]').disabled = false;
    if (S.cur + 1 < S.questions.length) { S.cur += 1; showCursor(item); }
  }

  function send(item, button) {
    if (!button || button.disabled || item.dataset.sent === "1") return;
    item.dataset.sent = "1";
    button.click();
  }

  document.addEventListener("keydown", (event) => {
    if (event.metaKey || event.altKey || event.ctrlKey || !queue() || TYPING.has(event.target.tagName)) return;
    const item = current();
    if (!item) return;
    const S = state(item);
    let handled = true;
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      if (S.questions.length) S.cur = (S.cur + (event.key === "ArrowRight" ? 1 : S.questions.length - 1)) % S.questions.length;
      showCursor(item);
    } else if (event.key === "a") {
      if (S.questions.length) edit(item, S.questions[S.cur].model_label);
    } else if (event.key === "A") {
      send(item, item.querySelector('[data-action="accept-all"]'));
    } else if (event.key === "x") {
      edit(item, null);
    } else if (event.key === "Enter") {
      send(item, item.querySelector('form[data-form="change"] [data-action="change"]'));
    } else if (event.key.length === 1 && item.querySelector(`.span-retype[data-shortcut="${CSS.escape(event.key)}"]`)) {
      edit(item, item.querySelector(`.span-retype[data-shortcut="${CSS.escape(event.key)}"]`).dataset.key || null);
    } else {
      handled = false;
    }
    if (handled) { event.preventDefault(); event.stopImmediatePropagation(); }
  }, true);

  document.addEventListener("click", (event) => {
    const button = event.target.closest(".review-span-item .span-retype");
    if (button) { edit(button.closest(".review-item"), button.dataset.key || null); return; }
    const mark = event.target.closest(".review-span-item [data-q]");
    if (mark) { const item = mark.closest(".review-item"); state(item).cur = Number(mark.dataset.q); showCursor(item); }
  });

  function init() { document.querySelectorAll(".review-span-item").forEach(showCursor); }
  document.addEventListener("htmx:afterSwap", init);
  document.addEventListener("htmx:responseError", () => document.querySelectorAll(".review-span-item").forEach((el) => delete el.dataset.sent));
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
