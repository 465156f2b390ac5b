"""The HTML shell of the page (twisted.web.template: every value escaped).

The shell names the peer, who is signed in and which tracker is in use; the
lists inside it are filled by ``static/app.js`` from the JSON API.
"""

from __future__ import annotations

from twisted.web.template import Element, XMLString, renderer

TEMPLATE = XMLString("""\
<html xmlns:t="http://twistedmatrix.com/ns/twisted.web.template/0.1" lang="en" t:render="page">
<head>
  <meta charset="utf-8"/>
  <meta name="viewport" content="width=device-width, initial-scale=1"/>
  <title>mbt peer <t:slot name="address"/></title>
  <link rel="stylesheet" href="/static/app.css"/>
  <script src="/static/app.js" defer="defer"></script>
</head>
<body>
  <header>
    <h1>mbt peer <span id="peer-address"><t:slot name="address"/></span></h1>
    <div id="who">
      <span id="who-text" t:render="who"/>
      <button id="logout" type="button" hidden="hidden">Log out</button>
    </div>
  </header>
  <div id="net-error" class="banner error" role="alert" hidden="hidden">
    <span id="net-error-text"></span> <button id="net-retry" type="button">Retry now</button>
  </div>
  <noscript><p class="banner error">This page needs JavaScript; the console works without it.</p></noscript>
  <section id="notices" aria-live="polite"><ul id="notice-list"></ul></section>

  <section id="signin" hidden="hidden">
    <h2>Sign in with your tracker account</h2>
    <form id="login-form" autocomplete="on">
      <label>User <input name="user" id="login-user" required="required" autocomplete="username"/></label>
      <label>Password <input name="password" id="login-password" type="password" required="required"
             autocomplete="current-password"/></label>
      <button type="submit" id="login-button">Sign in</button>
      <button type="button" id="create-user-button">Create account</button>
    </form>
    <p class="msg" id="signin-msg"></p>
  </section>

  <main id="app" hidden="hidden">
    <section id="groups">
      <h2>Groups</h2>
      <form id="group-form" class="inline">
        <input id="group-name" name="group" placeholder="group id" required="required"/>
        <button type="submit" id="create-group">Create</button>
        <button type="button" id="join-group">Join</button>
        <button type="button" id="refresh-groups">Refresh</button>
      </form>
      <p class="msg" id="groups-msg"></p>
      <table id="group-table">
        <thead><tr><th>Group</th><th>Owner</th><th>Members</th><th>You</th><th></th></tr></thead>
        <tbody></tbody>
      </table>
      <div id="requests"></div>
    </section>

    <section id="files" hidden="hidden">
      <h2>Files of <span id="files-group"></span></h2>
      <form id="share-form" class="inline">
        <input id="share-path" name="path" placeholder="path of a file on this peer's disk" required="required"/>
        <button type="submit" id="share-button">Share</button>
        <button type="button" id="refresh-files">Refresh</button>
      </form>
      <form id="dest-form" class="inline">
        <label>Download into <input id="dest" name="dest" placeholder="a directory or a new file path"/></label>
      </form>
      <p class="msg" id="files-msg"></p>
      <table id="file-table">
        <thead><tr><th>Name</th><th>Size</th><th>Pieces</th><th>Peers</th><th></th></tr></thead>
        <tbody></tbody>
      </table>
    </section>

    <section id="downloads">
      <h2>Downloads</h2>
      <button type="button" id="clear-downloads">Clear finished</button>
      <p class="msg" id="downloads-msg"></p>
      <div id="download-list"><p class="empty">(no downloads)</p></div>
    </section>
  </main>
</body>
</html>
""")


class Page(Element):
    """The shell: peer address, signed-in user and tracker, all escaped."""

    loader = TEMPLATE

    def __init__(self, address: str, who: str) -> None:
        super().__init__()
        self.address = address
        self.who_text = who

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(address=self.address)

    @renderer
    def who(self, request, tag):
        return tag(self.who_text)
