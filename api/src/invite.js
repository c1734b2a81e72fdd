// The invite page: moves the invitation code from the link's fragment (which browsers never
// send to the server, so no request log holds it) into the form, then drops it from the URL.
(function () {
  var code = decodeURIComponent(window.location.hash.slice(1));
  if (code) {
    document.getElementById("token").value = code;
    history.replaceState(null, "", window.location.pathname);
  }
})();
