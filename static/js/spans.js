// Span tagging on the labelling page of a span project, keyboard first.
//
// The server sends the text, its tokens (character offsets) and the model's suggested spans as JSON
// (#span-data, never executed: CSP). This script draws each token as one element once per item, then
// every key touches only the tokens it changes: a cursor move toggles two classes, a tag repaints the
// tokens of the spans it adds and replaces. Nothing re-renders the text, so a 50,000-character document
// answers a key as fast as a sentence. One listener each for keys (capture phase, before label.js, which
// keeps skip / undo / flag / comment / panels / scrolling) and mouse events (delegated from the document):
// they survive htmx swapping #label-item.
(function () {
  "use strict";
  const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);
  const SENTENCE_END = /^[.!?…]+["'”’)\]]*$/;
  const JUMP = 5;
  let S = null; // the item on screen: tokens, spans, cursor and selection

  function root() { return document.getElementById("label-item"); }

  function escapeHtml(text) {
    return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }

  // --- Drawing an item ----------------------------------------------------------------------------------------

  function setup() {
    const item = root();
    const dataEl = item && item.querySelector("#span-data");
    if (!dataEl) { S = null; return; }
    const t0 = performance.now();
    const data = JSON.parse(dataEl.textContent);
    const box = item.querySelector(".span-text");
    const text = data.text;
    const n = data.tokens.length;
    const starts = new Array(n), ends = new Array(n), parts = [];
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const s = data.tokens[i][0], e = data.tokens[i][1];
      starts[i] = s; ends[i] = e;
      if (s > pos) parts.push(escapeHtml(text.slice(pos, s)));
      parts.push('<span class="t" data-i="', i, '">', escapeHtml(text.slice(s, e)), "</span>");
      pos = e;
    }
    if (pos < text.length) parts.push(escapeHtml(text.slice(pos)));
    box.innerHTML = parts.join("");
    const byShortcut = {};
    const legend = item.querySelectorAll(".span-label");
    legend.forEach((b) => { if (b.dataset.shortcut) byShortcut[b.dataset.shortcut] = b.dataset.key; });
    S = {
      item, box, text, n, starts, ends, labels: data.labels, byShortcut,
      els: Array.from(box.children), owner: new Array(n).fill(null), spans: new Set(),
      startIndex: new Map(starts.map((s, i) => [s, i])), endIndex: new Map(ends.map((e, i) => [e, i])),
      cur: 0, anchor: null, selLo: -1, selHi: -1, dragging: false, dragFrom: -1,
      active: legend.length ? legend[0].dataset.key : null,
    };
    let skipped = 0;
    for (const span of data.initial) if (!place(span, false)) skipped++;
    for (const span of data.suggested) if (!place(span, true)) skipped++;
    if (n) S.els[0].classList.add("cur");
    markActive();
    if (skipped) say(`${skipped} suggested span${skipped > 1 ? "s were" : " was"} not on this text's tokens and ${skipped > 1 ? "are" : "is"} not shown.`);
    else if (!n) say("This text has no tokens to tag; Enter submits it as having no entity.");
    performance.measure("span-render", { start: t0, end: performance.now() });
  }

  // A span from the server (character offsets) as token indices; false when it does not fit.
  function place(span, suggested) {
    const a = S.startIndex.get(span.start), b = S.endIndex.get(span.end);
    if (a === undefined || b === undefined || b < a || !S.labels[span.label]) return false;
    for (let i = a; i <= b; i++) if (S.owner[i]) return false;
    add({ a, b, key: span.label, sugg: suggested, conf: suggested ? span.confidence : null });
    return true;
  }

  function add(span) {
    S.spans.add(span);
    for (let i = span.a; i <= span.b; i++) S.owner[i] = span;
    paint(span, true);
  }

  function remove(span) {
    S.spans.delete(span);
    for (let i = span.a; i <= span.b; i++) S.owner[i] = null;
    paint(span, false);
  }

  function paint(span, on) {
    const label = S.labels[span.key] || { name: span.key, colour: "#6e7781" };
    for (let i = span.a; i <= span.b; i++) {
      const el = S.els[i];
      el.classList.toggle("s", on);
      el.classList.toggle("sugg", on && span.sugg);
      if (on) el.style.setProperty("--c", label.colour); else el.style.removeProperty("--c");
    }
    S.els[span.a].classList.toggle("s-first", on);
    S.els[span.b].classList.toggle("s-last", on);
    const last = S.els[span.b];
    if (on) {
      const conf = span.sugg && typeof span.conf === "number" ? ` ${Math.round(span.conf * 100)}%` : "";
      last.dataset.tag = label.name + conf;
      last.title = span.sugg ? `Suggested ${label.name}${conf}: a accepts, x rejects` : label.name;
    } else {
      delete last.dataset.tag;
      last.removeAttribute("title");
    }
  }

  function words(span) { return S.text.slice(S.starts[span.a], S.ends[span.b]); }
  function nameOf(key) { return (S.labels[key] || { name: key }).name; }
  function clip(text) { return text.length > 40 ? text.slice(0, 37) + "…" : text; }

  function say(message) {
    const status = S.item.querySelector("#span-status");
    let user = 0, sugg = 0;
    for (const span of S.spans) { if (span.sugg) sugg++; else user++; }
    const counts = `${user} span${user === 1 ? "" : "s"}` + (sugg ? `, ${sugg} suggested (Enter accepts them)` : "");
    if (status) status.textContent = message ? `${message} · ${counts}` : counts;
  }

  function markActive() {
    S.item.querySelectorAll(".span-label").forEach((b) => b.classList.toggle("active", b.dataset.key === S.active));
  }

  // --- Cursor and selection -----------------------------------------------------------------------------------

  function moveTo(index, extend) {
    if (!S.n) return;
    const i = Math.max(0, Math.min(S.n - 1, index));
    if (extend) { if (S.anchor === null) S.anchor = S.cur; } else S.anchor = null;
    S.els[S.cur].classList.remove("cur");
    S.cur = i;
    S.els[i].classList.add("cur");
    if (S.anchor === null) select(-1, -1); else select(Math.min(S.anchor, i), Math.max(S.anchor, i));
    reveal(S.els[i]);
  }

  // Only the tokens that enter or leave the selection change.
  function select(lo, hi) {
    const oldLo = S.selLo, oldHi = S.selHi;
    if (oldLo >= 0) for (let i = oldLo; i <= oldHi; i++) if (i < lo || i > hi) S.els[i].classList.remove("sel");
    if (lo >= 0) for (let i = lo; i <= hi; i++) if (i < oldLo || i > oldHi) S.els[i].classList.add("sel");
    S.selLo = lo; S.selHi = hi;
  }

  function reveal(el) {
    const box = S.box;
    const top = el.offsetTop, bottom = top + el.offsetHeight, margin = 24;
    if (top < box.scrollTop + margin) box.scrollTop = Math.max(0, top - margin);
    else if (bottom > box.scrollTop + box.clientHeight - margin) box.scrollTop = bottom - box.clientHeight + margin;
  }

  function sentenceStart(i) {
    if (i <= 0) return true;
    if (SENTENCE_END.test(S.text.slice(S.starts[i - 1], S.ends[i - 1]))) return true;
    return S.text.slice(S.ends[i - 1], S.starts[i]).includes("\n");
  }

  // Ctrl+arrow: 5 tokens, but never past the start of a sentence, so repeated presses stop at each one.
  function jump(direction) {
    let j = S.cur;
    if (direction > 0) {
      do { j++; } while (j < S.n - 1 && j - S.cur < JUMP && !sentenceStart(j));
    } else {
      do { j--; } while (j > 0 && S.cur - j < JUMP && !sentenceStart(j));
    }
    return j;
  }

  function range() { return S.selLo >= 0 ? [S.selLo, S.selHi] : [S.cur, S.cur]; }

  function spansIn(lo, hi) {
    const found = [];
    for (let i = lo; i <= hi; i++) {
      const span = S.owner[i];
      if (span && found[found.length - 1] !== span) found.push(span);
    }
    return found;
  }

  // --- Edits -----------------------------------------------------------------------------------------------------

  function tag(lo, hi, key) {
    if (!S.n || !S.labels[key]) return;
    const replaced = spansIn(lo, hi);
    replaced.forEach(remove);
    const span = { a: lo, b: hi, key, sugg: false, conf: null };
    add(span);
    S.active = key;
    markActive();
    S.anchor = null;
    select(-1, -1);
    S.els[S.cur].classList.remove("cur");
    S.cur = hi;
    S.els[hi].classList.add("cur");
    const note = replaced.length
      ? `; replaced ${replaced.map((r) => `${r.sugg ? "suggested " : ""}${nameOf(r.key)} “${clip(words(r))}”`).join(", ")}`
      : "";
    say(`Tagged “${clip(words(span))}” as ${nameOf(key)}${note}`);
  }

  function removeAt() {
    const [lo, hi] = range();
    const gone = spansIn(lo, hi);
    if (!gone.length) { say("No span under the cursor to remove"); return; }
    gone.forEach(remove);
    S.anchor = null;
    select(-1, -1);
    say(`Removed ${gone.map((r) => `${nameOf(r.key)} “${clip(words(r))}”`).join(", ")}`);
  }

  function suggestionAt() {
    const span = S.n ? S.owner[S.cur] : null;
    return span && span.sugg ? span : null;
  }

  function accept() {
    const span = suggestionAt();
    if (!span) { say("No suggestion under the cursor (Tab goes to the next one)"); return; }
    span.sugg = false;
    span.conf = null;
    paint(span, true);
    say(`Accepted ${nameOf(span.key)} “${clip(words(span))}”`);
  }

  function reject() {
    const span = suggestionAt();
    if (!span) { say("No suggestion under the cursor (Backspace removes a span of yours)"); return; }
    remove(span);
    say(`Rejected the suggested ${nameOf(span.key)} “${clip(words(span))}”`);
  }

  function nextSpan(direction) {
    for (let i = S.cur + direction; i >= 0 && i < S.n; i += direction) {
      const span = S.owner[i];
      if (span && span.a === i && span !== S.owner[S.cur]) { moveTo(i, false); return; }
    }
    say(direction > 0 ? "No span or suggestion after the cursor" : "No span or suggestion before the cursor");
  }

  function collect() {
    const out = [];
    for (const span of S.spans) out.push({ start: S.starts[span.a], end: S.ends[span.b], label: span.key });
    return out.sort((x, y) => x.start - y.start);
  }

  function submit() {
    const button = S.item.querySelector('#label-form [data-action="submit"]');
    if (!button || S.item.dataset.sent === "1") return;
    S.item.dataset.sent = "1";
    button.click();
  }

  // --- Keys ------------------------------------------------------------------------------------------------------

  function handle(event) {
    const key = event.key;
    if (key === "ArrowRight" || key === "ArrowLeft") {
      const direction = key === "ArrowRight" ? 1 : -1;
      moveTo(event.ctrlKey ? jump(direction) : S.cur + direction, event.shiftKey);
      return true;
    }
    if (event.ctrlKey) return false;
    switch (key) {
      case "Home": moveTo(0, event.shiftKey); return true;
      case "End": moveTo(S.n - 1, event.shiftKey); return true;
      case "Enter": submit(); return true;
      case "Backspace": case "Delete": removeAt(); return true;
      case "Tab": nextSpan(event.shiftKey ? -1 : 1); return true;
      case "Escape":
        if (S.selLo < 0) return false;
        S.anchor = null; select(-1, -1); return true;
    }
    const label = S.byShortcut[key];
    if (label) { const [lo, hi] = range(); tag(lo, hi, label); return true; }
    if (key === "a") { accept(); return true; }
    if (key === "x") { reject(); return true; }
    return false;
  }

  document.addEventListener("keydown", (event) => {
    if (!S || S.item !== root() || event.metaKey || event.altKey) return;
    if (TYPING.has(event.target.tagName) || document.querySelector("dialog[open]")) return;
    if (S.item.dataset.sent === "1") {
      if (event.key === "Enter") event.preventDefault();
      return;
    }
    if (handle(event)) { event.preventDefault(); event.stopPropagation(); }
  }, true);

  // --- Mouse: drag or double-click tags with the highlighted label; a click in the legend picks it ---------

  function tokenIndex(target) {
    const el = target.closest && target.closest(".span-text .t");
    return el && S && S.box.contains(el) ? Number(el.dataset.i) : -1;
  }

  document.addEventListener("mousedown", (event) => {
    if (!S || event.button !== 0) return;
    const i = tokenIndex(event.target);
    if (i < 0) return;
    event.preventDefault();
    S.dragging = true;
    S.dragFrom = i;
    moveTo(i, false);
  });

  document.addEventListener("mouseover", (event) => {
    if (!S || !S.dragging) return;
    const i = tokenIndex(event.target);
    if (i < 0 || i === S.cur) return;
    if (S.anchor === null) S.anchor = S.dragFrom;
    moveTo(i, true);
  });

  document.addEventListener("mouseup", () => {
    if (!S || !S.dragging) return;
    S.dragging = false;
    if (S.selLo >= 0 && S.selHi > S.selLo && S.active) tag(S.selLo, S.selHi, S.active);
  });

  document.addEventListener("dblclick", (event) => {
    if (!S) return;
    const i = tokenIndex(event.target);
    if (i >= 0 && S.active) tag(i, i, S.active);
  });

  document.addEventListener("click", (event) => {
    const button = S && event.target.closest && event.target.closest(".span-label");
    if (!button || !S.item.contains(button)) return;
    S.active = button.dataset.key;
    markActive();
    if (S.selLo >= 0) tag(S.selLo, S.selHi, S.active);
    else say(`${nameOf(S.active)} is the mouse's label: drag over tokens or double-click one`);
  });

  // The form sends the spans on screen (htmx reads the form after this capture-phase listener).
  document.addEventListener("submit", (event) => {
    if (!S || event.target.id !== "label-form" || !S.item.contains(event.target)) return;
    event.target.querySelector('input[name="spans"]').value = JSON.stringify(collect());
  }, true);

  // Spans the server refuses (400) leave the item and its tagging on screen, with the reason.
  document.addEventListener("htmx:responseError", (event) => {
    if (!S || event.detail.elt.id !== "label-form") return;
    const box = S.item.querySelector("#span-error");
    if (box) { box.textContent = event.detail.xhr.responseText; box.hidden = false; }
    delete S.item.dataset.sent;
  });

  function maybeSetup() { if (!S || S.item !== root()) setup(); }
  document.addEventListener("htmx:load", maybeSetup);
  document.addEventListener("DOMContentLoaded", maybeSetup);
})();
