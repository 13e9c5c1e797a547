// Shows why the last sign-in failed (the server redirects here with ?failed=1).
"use strict";
if (new URLSearchParams(location.search).has("failed")) {
  document.getElementById("login-error").hidden = false;
}
