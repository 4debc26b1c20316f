// django-rq's job page: a result row opens the result, as its inline onclick meant to (labelhub/urls.py takes
// inline handlers out of django-rq's pages, since the Content-Security-Policy refuses them).
document.addEventListener("DOMContentLoaded", () => {
  for (const row of document.querySelectorAll("tr.rq-clickable")) {
    const link = row.querySelector("a[href]");
    if (!link) continue;
    row.addEventListener("click", (event) => {
      if (event.target.closest("a")) return; // the link itself navigates
      window.location.assign(link.href);
    });
  }
});
