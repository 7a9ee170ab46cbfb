// Shared by every page: nothing here touches model output.
(function () {
  "use strict";
  window.alignloop = window.alignloop || {};
  window.alignloop.csrf = function () {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  };
})();
