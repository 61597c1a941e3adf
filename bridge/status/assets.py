"""The page's style sheet and script, served from the bridge itself: the shop's browser may have no internet."""

CSS = b"""\
:root { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b; background: #f4f5f7; }
body { margin: 0 auto; max-width: 60rem; padding: 0.75rem; line-height: 1.4; }
header { display: flex; justify-content: space-between; align-items: center; gap: 1rem; flex-wrap: wrap; }
h1 { font-size: 1.3rem; margin: 0.3rem 0; }
h2 { font-size: 1.1rem; margin: 1.2rem 0 0.4rem; }
h3 { font-size: 1rem; margin: 0 0 0.4rem; }
h4 { font-size: 0.9rem; margin: 0.6rem 0 0.2rem; }
section > article, .login { background: #fff; border: 1px solid #d5d8dc; border-left-width: 6px;
  border-radius: 6px; padding: 0.6rem 0.8rem; margin: 0.5rem 0; }
article.up { border-left-color: #2e7d32; }
article.down, article.unknown { border-left-color: #c62828; }
.state { font-weight: normal; font-size: 0.9rem; padding: 0.05rem 0.5rem; border-radius: 1rem; background: #e8eaed; }
article.down .state { background: #fdecea; color: #a11; }
article.up .state { background: #e7f4e8; color: #1b5e20; }
.health { font-size: 1.1rem; font-weight: 600; padding: 0.7rem 0.9rem; border-radius: 6px; margin: 0.5rem 0; }
.health.ok { background: #e7f4e8; color: #1b5e20; }
.health.bad { background: #fdecea; color: #8e0000; }
.flash { padding: 0.5rem 0.8rem; border-radius: 6px; }
.flash.ok { background: #e7f4e8; } .flash.error, .error { background: #fdecea; color: #8e0000; padding: 0.5rem; }
.attention > p { background: #fff8e1; padding: 0.5rem; border-radius: 6px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 0.8rem; margin: 0; }
dt { color: #555; } dd { margin: 0; overflow-wrap: anywhere; }
ul { margin: 0; padding-left: 1.2rem; }
form.resolve { margin-top: 0.6rem; display: grid; gap: 0.4rem; }
fieldset { border: 1px solid #d5d8dc; border-radius: 6px; }
label { display: block; } label.choice { margin: 0.2rem 0; }
input[type=text], input:not([type]), input[type=password] { display: block; width: 100%; box-sizing: border-box;
  padding: 0.45rem; font-size: 1rem; margin-top: 0.15rem; border: 1px solid #aaa; border-radius: 4px; }
button { font-size: 1rem; padding: 0.45rem 1rem; border-radius: 4px; border: 1px solid #1a4d8f;
  background: #1f5fae; color: #fff; cursor: pointer; }
.logout button { background: #fff; color: #1f5fae; }
.login form { display: grid; gap: 0.5rem; max-width: 22rem; }
.updated { color: #666; font-size: 0.85rem; }
code { background: #eceff1; padding: 0 0.2rem; }
@media (max-width: 30rem) { dl { grid-template-columns: 1fr; } dt { font-weight: 600; } }
"""

#: Fetch the main part again every few seconds and put it in place, unless someone is filling in a form.
SCRIPT = b"""\
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main) { return; }
  var seconds = parseInt(main.getAttribute("data-refresh"), 10) || 5;
  function busy() {
    var active = document.activeElement;
    if (active && active.form) { return true; }
    var fields = main.querySelectorAll("form.resolve input:not([type=hidden])");
    for (var i = 0; i < fields.length; i++) {
      if ((fields[i].type === "radio" && fields[i].checked) || (fields[i].type !== "radio" && fields[i].value)) {
        return true;
      }
    }
    return false;
  }
  function refresh() {
    if (busy()) { return; }
    fetch("/fragment", {credentials: "same-origin", cache: "no-store"}).then(function (response) {
      if (response.status === 401) { window.location.assign("/login"); return null; }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined && !busy()) { main.innerHTML = html; }
    }).catch(function () {
      var health = document.getElementById("health");
      if (health) { health.className = "health bad"; health.textContent = "The bridge does not answer."; }
    });
  }
  window.setInterval(refresh, seconds * 1000);
}());
"""
