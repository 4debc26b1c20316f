// Span tagging on the labelling page of a span project, keyboard first.
//
// The server sends the text, its tokens (character offsets) and the model's suggested spans as JSON
// (#span-data, never executed: CSP). This script draws each token as one element, a block of text at a
// time as it nears the screen, then every key touches only the tokens it changes: a cursor move restyles
// two tokens, a tag the tokens of the spans it adds and replaces. Nothing re-renders the text, so a
// 50,000-character document answers a key as fast as a sentence. One listener each for keys (capture phase, before label.js, which
// keeps skip / undo / flag / comment / panels / scrolling) and mouse events (delegated from the document):
// they survive htmx swapping #label-item.
(function () {
  "use strict";
  const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);
  const SENTENCE_END = /^[.!?…]+["'”’)\]]*$/;
  const JUMP = 5;
  const BLOCK_CHARS = 1500;
  const FIRST_CHARS = 4000; // drawn as tokens at once: more than a screenful of the box
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
    // Offsets from the server count code points; JavaScript strings count UTF-16 units. They differ only
    // past a character outside the BMP (an emoji, say): then `starts` / `ends` (for slicing the text) are
    // converted, and `cpStarts` / `cpEnds` keep the server's offsets for what is sent back.
    let u16 = null;
    if (/[\uD800-\uDFFF]/.test(text)) {
      u16 = [];
      let unit = 0;
      for (const ch of text) { u16.push(unit); unit += ch.length; }
      u16.push(unit);
    }
    const starts = new Array(n), ends = new Array(n), cpStarts = new Array(n), cpEnds = new Array(n);
    // The text in blocks: each line is one (a long paragraph is cut after a sentence every BLOCK_CHARS
    // characters). A block is first drawn as plain text; its tokens become elements when it comes near
    // the visible part of the box (and at once for the first screenful), so a long document costs little to
    // open, and a tag relays out one block, not the whole document.
    const blocks = [{ first: 0, from: 0, to: text.length }];
    let pos = 0, newline = text.indexOf("\n");
    for (let i = 0; i < n; i++) {
      cpStarts[i] = data.tokens[i][0]; cpEnds[i] = data.tokens[i][1];
      const s = u16 ? u16[cpStarts[i]] : cpStarts[i], e = u16 ? u16[cpEnds[i]] : cpEnds[i];
      starts[i] = s; ends[i] = e;
      const block = blocks[blocks.length - 1];
      if (newline >= 0 && newline < pos) newline = text.indexOf("\n", pos);
      const breaksLine = newline >= 0 && newline < s;
      if (i > 0 && (breaksLine || (s - block.from > BLOCK_CHARS && SENTENCE_END.test(text.slice(starts[i - 1], pos))))) {
        block.to = breaksLine ? newline : s;
        blocks.push({ first: i, from: breaksLine ? newline + 1 : s, to: text.length });
      }
      pos = e;
    }
    blocks.forEach((block, k) => { block.last = k + 1 < blocks.length ? blocks[k + 1].first - 1 : n - 1; });
    box.innerHTML = blocks.map((b, k) => `<div class="ln" data-b="${k}">${escapeHtml(text.slice(b.from, b.to))}</div>`).join("");
    const byShortcut = {};
    const legend = item.querySelectorAll(".span-label");
    legend.forEach((b) => { if (b.dataset.shortcut) byShortcut[b.dataset.shortcut] = b.dataset.key; });
    S = {
      item, box, text, n, starts, ends, cpStarts, cpEnds, labels: data.labels, byShortcut, blocks,
      blockEls: box.children, els: new Array(n).fill(null), owner: new Array(n).fill(null), spans: new Set(),
      startIndex: new Map(cpStarts.map((s, i) => [s, i])), endIndex: new Map(cpEnds.map((e, i) => [e, i])),
      cur: 0, anchor: null, selLo: -1, selHi: -1, dragging: false, dragFrom: -1,
      active: legend.length ? legend[0].dataset.key : null, acceptAt: data.accept_at,
    };
    let skipped = 0;
    for (const span of data.initial) if (!place(span, false)) skipped++;
    for (const span of data.suggested) if (!place(span, true)) skipped++;
    for (let k = 0, chars = 0; k < blocks.length && chars < FIRST_CHARS; k++) {
      build(k);
      chars += blocks[k].to - blocks[k].from;
    }
    const observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (entry.isIntersecting) { observer.unobserve(entry.target); build(Number(entry.target.dataset.b)); }
      }
    }, { root: box, rootMargin: "600px 0px" });
    for (let k = 0; k < blocks.length; k++) if (!blocks[k].built) observer.observe(S.blockEls[k]);
    markActive();
    if (skipped) say(`${skipped} suggested span${skipped > 1 ? "s were" : " was"} not on this text's tokens and ${skipped > 1 ? "are" : "is"} not shown.`);
    else if (!n) say("This text has no tokens to tag; Enter submits it as having no entity.");
    // How long drawing took, and until the next frame was on screen (style, layout and paint included).
    performance.measure("span-render", { start: t0, end: performance.now() });
    requestAnimationFrame(() => setTimeout(() => performance.measure("span-render-frame", { start: t0 }), 0));
  }

  // A block's tokens as elements, drawn with the spans, cursor and selection they have now.
  function build(k) {
    const block = S.blocks[k];
    if (block.built) return;
    block.built = true;
    const parts = [];
    let pos = block.from;
    for (let i = block.first; i <= block.last; i++) {
      if (S.starts[i] > pos) parts.push(escapeHtml(S.text.slice(pos, S.starts[i])));
      parts.push('<span class="t" data-i="', i, '">', escapeHtml(S.text.slice(S.starts[i], S.ends[i])), "</span>");
      pos = S.ends[i];
    }
    if (pos < block.to) parts.push(escapeHtml(S.text.slice(pos, block.to)));
    const el = S.blockEls[k];
    el.innerHTML = parts.join("");
    const tokens = el.children;
    for (let i = block.first; i <= block.last; i++) {
      S.els[i] = tokens[i - block.first];
      decorate(i);
    }
  }

  function blockOf(i) {
    let lo = 0, hi = S.blocks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (S.blocks[mid].first <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  // A span from the server (character offsets) as token indices; false when it does not fit.
  function place(span, suggested) {
    const a = S.startIndex.get(span.start), b = S.endIndex.get(span.end);
    if (a === undefined || b === undefined || b < a || !S.labels[span.label]) return false;
    for (let i = a; i <= b; i++) if (S.owner[i]) return false;
    const conf = suggested ? span.confidence : null;
    // A weak suggestion (below the page's accept_at) is drawn fainter and left out on Enter unless accepted with a.
    const weak = suggested && typeof conf === "number" && conf < (S.acceptAt ?? 0.5);
    add({ a, b, key: span.label, sugg: suggested, conf, weak });
    return true;
  }

  function add(span) {
    S.spans.add(span);
    for (let i = span.a; i <= span.b; i++) S.owner[i] = span;
    redraw(span.a, span.b);
  }

  function remove(span) {
    S.spans.delete(span);
    for (let i = span.a; i <= span.b; i++) S.owner[i] = null;
    redraw(span.a, span.b);
  }

  function redraw(lo, hi) { for (let i = lo; i <= hi; i++) decorate(i); }

  // One token's look from the state: its span (colour, first / last, the label chip on the last), suggestion,
  // cursor, selection. Tokens of blocks not drawn yet are skipped: build() draws them from the same state.
  function decorate(i) {
    const el = S.els[i];
    if (!el) return;
    const span = S.owner[i];
    let cls = "t";
    if (span) cls += (span.sugg ? (span.weak ? " s sugg weak" : " s sugg") : " s") + (i === span.a ? " s-first" : "") + (i === span.b ? " s-last" : "");
    if (i === S.cur) cls += " cur";
    if (S.selLo >= 0 && i >= S.selLo && i <= S.selHi) cls += " sel";
    if (el.className !== cls) el.className = cls;
    const label = span ? S.labels[span.key] || { name: span.key, colour: "#6e7781" } : null;
    if (label) el.style.setProperty("--c", label.colour); else if (el.style.length) el.removeAttribute("style");
    if (span && i === span.b) {
      const conf = span.sugg && typeof span.conf === "number" ? ` ${Math.round(span.conf * 100)}%` : "";
      el.dataset.tag = label.name + conf;
      el.title = span.sugg
        ? `Suggested ${label.name}${conf}: a accepts, x rejects` + (span.weak ? " (left out on Enter unless accepted)" : "")
        : label.name;
    } else if (el.dataset.tag !== undefined) {
      delete el.dataset.tag;
      el.removeAttribute("title");
    }
  }

  function words(span) { return S.text.slice(S.starts[span.a], S.ends[span.b]); }
  function nameOf(key) { return (S.labels[key] || { name: key }).name; }
  function clip(text) { return text.length > 40 ? text.slice(0, 37) + "…" : text; }

  function say(message) {
    const status = S.item.querySelector("#span-status");
    let user = 0, sugg = 0, weak = 0;
    for (const span of S.spans) { if (span.sugg) { sugg++; if (span.weak) weak++; } else user++; }
    const taken = weak ? (weak === sugg ? "Enter leaves them out; a accepts one" : `Enter accepts ${sugg - weak}, not the ${weak} fainter`)
      : "Enter accepts them";
    const counts = `${user} span${user === 1 ? "" : "s"}` + (sugg ? `, ${sugg} suggested (${taken})` : "");
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
    const old = S.cur;
    S.cur = i;
    decorate(old);
    if (S.anchor === null) select(-1, -1); else select(Math.min(S.anchor, i), Math.max(S.anchor, i));
    decorate(i);
    reveal(i);
  }

  // Only the tokens that enter or leave the selection change.
  function select(lo, hi) {
    const oldLo = S.selLo, oldHi = S.selHi;
    S.selLo = lo; S.selHi = hi;
    if (oldLo >= 0) for (let i = oldLo; i <= oldHi; i++) if (i < lo || i > hi) decorate(i);
    if (lo >= 0) for (let i = lo; i <= hi; i++) if (i < oldLo || i > oldHi) decorate(i);
  }

  function reveal(i) {
    build(blockOf(i));
    const el = S.els[i], box = S.box;
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
    S.anchor = null;
    select(-1, -1);
    const old = S.cur;
    S.cur = hi;
    decorate(old);
    const span = { a: lo, b: hi, key, sugg: false, conf: null };
    add(span);
    S.active = key;
    markActive();
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
    span.weak = false;
    span.conf = null;
    redraw(span.a, span.b);
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
    for (const span of S.spans) {
      if (span.sugg && span.weak) continue;
      out.push({ start: S.cpStarts[span.a], end: S.cpEnds[span.b], label: span.key });
    }
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
