// The console's own script: the CSRF header on htmx requests, and the proof drop zone.
// No inline script anywhere (the Content-Security-Policy forbids it).
(function () {
  "use strict";
  var body = document.body;
  var csrf = body.getAttribute("data-csrf") || "";

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf;
  });

  var zone = document.getElementById("dropzone");
  if (!zone) return;
  var input = document.getElementById("proof-file");
  var result = document.getElementById("drop-result");

  function verify(file) {
    if (!file) return;
    result.textContent = "Verifying " + file.name + "…";
    file.text().then(function (text) {
      return fetch(zone.getAttribute("data-verify"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: text,
      });
    }).then(function (response) {
      return response.text().then(function (html) {
        var type = response.headers.get("content-type") || "";
        if (type.indexOf("text/html") !== 0) {
          throw new Error("HTTP " + response.status + ": " + html.slice(0, 200));
        }
        // the fragment is server-rendered and autoescaped (a refusal names its reason too)
        result.innerHTML = html;
      });
    }).catch(function (error) {
      result.textContent = "Could not verify: " + error.message;
    });
  }

  zone.addEventListener("dragover", function (event) {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    zone.classList.remove("over");
    verify(event.dataTransfer.files[0]);
  });
  input.addEventListener("change", function () { verify(input.files[0]); });
})();
