// Drag-and-drop onto the upload form; the plain file input keeps working without it.
(function () {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("id_file");
  const name = document.getElementById("dropzone-name");
  if (!zone || !input) return;
  const show = () => { name.textContent = input.files.length ? input.files[0].name : ""; };
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault(); zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault(); zone.classList.remove("over");
  }));
  zone.addEventListener("drop", (event) => {
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      show();
    }
  });
  input.addEventListener("change", show);
})();
