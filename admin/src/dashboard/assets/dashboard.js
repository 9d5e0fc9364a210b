// agentwire dashboard: live updates. The page's <body data-live="PAGE"> names the fragment set
// to follow; the server sends `fragments` events on /dashboard/events whose data is a JSON
// object {element id: inner HTML}, and this script swaps each element's content. No framework,
// no build step. Without JavaScript the pages still work (reload to refresh).
(function () {
  'use strict';
  var page = document.body && document.body.dataset.live;
  if (!page || !window.EventSource) return;
  var status = document.getElementById('live-status');
  function setStatus(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = 'live ' + cls;
  }
  var url = '/dashboard/events?page=' + encodeURIComponent(page);
  var named = document.querySelector('[data-name]');
  if (named) url += '&name=' + encodeURIComponent(named.dataset.name);
  var updates = 0;
  var source = null;
  function connect() {
    source = new EventSource(url);
    source.addEventListener('fragments', function (ev) {
      var map;
      try {
        map = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      Object.keys(map).forEach(function (id) {
        var el = document.getElementById(id);
        if (el) el.innerHTML = map[id];
      });
      updates += 1;
      document.body.dataset.updates = String(updates);
      setStatus('live', 'on');
    });
    source.onerror = function () {
      // EventSource reconnects by itself while the page is open; a closed stream (the broker
      // went away) is retried after a pause.
      setStatus('reconnecting', 'off');
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, 3000);
      }
    };
  }
  window.addEventListener('beforeunload', function () {
    if (source) source.close();
  });
  connect();
})();
