// Keyboard-first adjudication: keys act on the outlined .adjudicate-item; htmx replaces the whole
// list after each decision, so the listener lives on the document and the first item is current again.
(function () {
  const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);

  function items() { return Array.from(document.querySelectorAll("#adjudication-list .adjudicate-item")); }
  function current() { return document.querySelector("#adjudication-list .adjudicate-item.current"); }
  function isMulti() { const list = document.getElementById("adjudication-list"); return list && list.dataset.multi === "1"; }

  function move(step) {
    const all = items();
    if (!all.length) return;
    const at = Math.max(0, all.indexOf(current()));
    const next = all[Math.min(all.length - 1, Math.max(0, at + step))];
    all.forEach((el) => el.classList.remove("current"));
    next.classList.add("current");
    next.scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || TYPING.has(event.target.tagName) && event.target.type !== "checkbox") return;
    const item = current();
    if (!item || item.dataset.sent === "1") return;
    if (event.key === "j" || event.key === "ArrowDown") { event.preventDefault(); move(1); return; }
    if (event.key === "k" || event.key === "ArrowUp") { event.preventDefault(); move(-1); return; }
    if (event.key === "Enter" && isMulti()) {
      event.preventDefault();
      item.dataset.sent = "1";
      item.querySelector("button[data-action=save]").click();
      return;
    }
    const label = item.querySelector(`.label-btn[data-shortcut="${CSS.escape(event.key)}"]`);
    if (!label) return;
    event.preventDefault();
    if (isMulti()) {
      const box = label.querySelector("input[type=checkbox]");
      box.checked = !box.checked;
      label.classList.toggle("checked", box.checked);
    } else {
      item.dataset.sent = "1";
      label.click();
    }
  });

  // Clicking an item makes it current, so the keys act where the mouse was.
  document.addEventListener("click", (event) => {
    const item = event.target.closest && event.target.closest("#adjudication-list .adjudicate-item");
    if (!item || item.classList.contains("current")) return;
    items().forEach((el) => el.classList.remove("current"));
    item.classList.add("current");
  });
  document.addEventListener("htmx:responseError", () => items().forEach((el) => { delete el.dataset.sent; }));
})();
