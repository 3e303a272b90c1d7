// Progressive enhancement only: every page reads and works without it, except drag-and-drop upload.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
});

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const text = document.querySelector(button.dataset.copy).textContent.trim();
  const status = button.parentElement.querySelector(".copied");
  try {
    await navigator.clipboard.writeText(text);
    if (status) status.textContent = "Copied.";
  } catch (error) {
    if (status) status.textContent = "Copy failed: select the key and copy it by hand.";
  }
});

const upload = document.getElementById("upload");
if (upload) {
  const drop = document.getElementById("drop");
  const input = document.getElementById("adapter-files");
  const chosen = document.getElementById("chosen");
  const progress = document.getElementById("progress");
  const result = document.getElementById("upload-result");
  let files = [];
  const show = () => { chosen.textContent = files.length ? files.map((f) => f.name).join(", ") : "none"; };
  input.addEventListener("change", () => { files = Array.from(input.files); show(); });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); } });
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => { event.preventDefault(); files = Array.from(event.dataTransfer.files); show(); });
  upload.addEventListener("submit", (event) => {
    event.preventDefault();
    result.textContent = "";
    result.className = "";
    if (!files.length) { result.textContent = "Choose the adapter's files first."; result.className = "error"; return; }
    const body = new FormData();
    body.append("name", document.getElementById("adapter-name").value.trim());
    const base = document.getElementById("base-model");
    if (base && base.value) body.append("base_model", base.value);
    files.forEach((file) => body.append("file", file, file.name));
    const request = new XMLHttpRequest();
    request.open("POST", "/dashboard/adapters/upload");
    request.setRequestHeader("x-csrf-token", upload.dataset.csrf);
    progress.hidden = false;
    progress.value = 0;
    request.upload.addEventListener("progress", (e) => { if (e.lengthComputable) progress.value = (100 * e.loaded) / e.total; });
    request.addEventListener("load", () => {
      let answer = {};
      try { answer = JSON.parse(request.responseText); } catch (error) { /* not JSON */ }
      if (request.status === 201) {
        result.textContent = `Uploaded ${answer.name}.`;
        window.location.reload();
      } else {
        const error = answer.error || {};
        result.textContent = `Upload refused: ${error.message || request.statusText}` + (error.param ? ` (${error.param})` : "");
        result.className = "error";
      }
    });
    request.addEventListener("error", () => { result.textContent = "The upload failed: network error."; result.className = "error"; });
    request.send(body);
  });
}

// The fine-tuning page: a training file goes up with its progress shown, then becomes the chosen
// file of the "start a job" form below it (a plain form: it works without this script too).
const trainingUpload = document.getElementById("training-upload");
if (trainingUpload) {
  const input = document.getElementById("training-file-input");
  const progress = document.getElementById("training-progress");
  const result = document.getElementById("training-upload-result");
  const select = document.getElementById("training-file");
  trainingUpload.addEventListener("submit", (event) => {
    event.preventDefault();
    result.textContent = "";
    result.className = "";
    const file = input.files[0];
    if (!file) { result.textContent = "Choose a JSONL file first."; result.className = "error"; return; }
    if (Number(trainingUpload.dataset.max) && file.size > Number(trainingUpload.dataset.max)) {
      result.textContent = `Upload refused: files are limited to ${trainingUpload.dataset.max} bytes (file)`;
      result.className = "error";
      return;
    }
    const body = new FormData();
    body.append("purpose", "fine-tune");
    body.append("file", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/dashboard/fine-tuning/files");
    request.setRequestHeader("x-csrf-token", trainingUpload.dataset.csrf);
    progress.hidden = false;
    progress.value = 0;
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        progress.dataset.events = String(Number(progress.dataset.events || 0) + 1);  // read by the browser test
        progress.value = (100 * e.loaded) / e.total;
        result.textContent = `Uploading ${file.name}: ${Math.floor(progress.value)} %`;
      }
    });
    request.addEventListener("load", () => {
      let answer = {};
      try { answer = JSON.parse(request.responseText); } catch (error) { /* not JSON */ }
      if (request.status === 201) {
        progress.value = 100;
        const option = document.createElement("option");
        option.value = answer.id;
        option.textContent = `${answer.filename} (${answer.id}, ${answer.bytes} bytes)`;
        Array.from(select.options).filter((o) => !o.value).forEach((o) => o.remove());
        select.prepend(option);
        select.value = answer.id;
        result.textContent = `Uploaded ${answer.filename} as ${answer.id}: start a job from it below.`;
        result.dataset.fileId = answer.id;
      } else {
        const error = answer.error || {};
        result.textContent = `Upload refused: ${error.message || request.statusText}` + (error.param ? ` (${error.param})` : "");
        result.className = "error";
      }
    });
    request.addEventListener("error", () => { result.textContent = "The upload failed: network error."; result.className = "error"; });
    request.send(body);
  });
}
