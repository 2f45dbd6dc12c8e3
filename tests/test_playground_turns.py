"""The playground's conversation in a real browser: regenerate, edit and resend, the stop
token shown, an empty reply explained, and the conversation kept across a page reload.

One server and one browser serve the playground tests (tests/playground_page.py
says how chromium is found); each test runs at a laptop's and a phone's width, starts
with the page's storage emptied, and saves a screenshot of what it checked. The chat
models are tiny random GPTs whose `<|end|>` is made likely: "chat" ends a reply after a
few tokens, "quiet" at once.
"""

from __future__ import annotations

import json

import pytest
from playground_page import Playground, playground

from folio.tokenizers.chat import END

WIDTHS = [1400, 420]


@pytest.fixture
def page(request) -> Playground:
    """The shared browser on the shared keyless server's page."""
    return playground(request.config)


# Records the body of every chat request the page sends.
RECORD_CHAT_REQUESTS = """
window.sent = [];
const realFetch = window.fetch;
window.fetch = (url, options) => {
  if (String(url).endsWith("/v1/chat/completions")) window.sent.push(JSON.parse(options.body));
  return realFetch(url, options);
};
"""


def _start(page: Playground, width: int, model: str = "chat", seed: str = "1") -> None:
    page.open(width, model)
    page.fill("max_tokens", "30")
    page.fill("seed", seed)


def _texts(page: Playground, css: str) -> list[str]:
    """The messages' own text: the bubble's text less its label and its buttons."""
    return [
        page.js(
            "const c = arguments[0].cloneNode(true);"
            "c.querySelectorAll('.who, .actions').forEach((e) => e.remove());"
            "return c.textContent;",
            el,
        )
        for el in page.all(css)
    ]


@pytest.mark.parametrize("width", WIDTHS)
def test_regenerate_samples_the_last_reply_again_in_its_place(page, width, tmp_path):
    _start(page, width)
    page.say("Sir")
    page.say("Speak")
    before = page.history()
    assert len(before) == 4
    buttons = page.all("#transcript .regen")
    assert len(buttons) == 1  # only the last reply can be regenerated
    assert page.all("#transcript .msg.assistant")[-1].find_elements("css selector", ".regen")
    page.js(RECORD_CHAT_REQUESTS)
    page.fill("seed", "2")
    page.click(buttons[0])
    # The same message sent again with the context before it, not the reply it replaces.
    assert page.js("return window.sent")[-1]["messages"] == [
        *before[:2],
        {"role": "user", "content": "Speak"},
    ]
    after = page.history()
    assert len(after) == 4 and after[:3] == before[:3]
    assert _texts(page, "#transcript .msg.user") == ["Sir", "Speak"]
    assert len(page.all("#transcript .msg.assistant")) == 2
    assert page.all("#transcript .replaced") == []
    assert page.find("prompt").get_attribute("value") == ""  # the composer is left alone
    # A regeneration that fails (max_tokens 0 is refused) keeps the reply it would replace.
    page.fill("max_tokens", "0")
    page.click(page.all("#transcript .regen")[0])
    assert len(page.all("#transcript .msg.error")) == 1
    assert page.history() == after
    assert page.all("#transcript .replaced") == []
    assert page.all("#transcript .msg.assistant")[-1].is_displayed()
    assert page.fits()
    page.screenshot(tmp_path / f"regenerate-{width}.png", show=page.find("transcript"))


@pytest.mark.parametrize("width", WIDTHS)
def test_edit_and_resend_replaces_a_message_and_drops_the_turns_after_it(page, width, tmp_path):
    _start(page, width)
    for text in ("Sir", "Speak", "hear"):
        page.say(text)
    before = page.history()
    edits = page.all("#transcript .msg.user .edit")
    assert len(edits) == 3
    # Cancelling leaves everything as it was.
    edits[0].click()
    assert page.find("editing").is_displayed()
    assert page.find("prompt").get_attribute("value") == "Sir"
    page.find("cancel-edit").click()
    assert not page.find("editing").is_displayed() and page.all(".msg.editing") == []
    assert page.find("prompt").get_attribute("value") == ""

    page.all("#transcript .msg.user .edit")[1].click()
    assert page.find("prompt").get_attribute("value") == "Speak"
    assert "editing" in page.all("#transcript .msg.user")[1].get_attribute("class")
    page.screenshot(tmp_path / f"editing-{width}.png", show=page.find("editing"))
    page.js(RECORD_CHAT_REQUESTS)
    page.say("All")
    assert page.js("return window.sent")[-1]["messages"] == [
        *before[:2],
        {"role": "user", "content": "All"},
    ]
    after = page.history()
    assert len(after) == 4 and after[:2] == before[:2]
    assert after[2] == {"role": "user", "content": "All"}
    assert _texts(page, "#transcript .msg.user") == ["Sir", "All"]  # "hear" and its reply gone
    assert len(page.all("#transcript .msg.assistant")) == 2
    assert not page.find("editing").is_displayed() and page.all(".msg.editing") == []
    assert page.fits()
    page.screenshot(tmp_path / f"edited-{width}.png", show=page.find("transcript"))


# Gives the page the stream a server sends when it reports the stop token: an entry for
# `<|end|>` (p = 0.9) in a chunk with no text, before the chunk with finish_reason "stop".
REPORT_THE_END_TOKEN = """
const realFetch = window.fetch;
window.fetch = async (url, options) => {
  const r = await realFetch(url, options);
  if (!String(url).endsWith("/v1/chat/completions") || !r.ok) return r;
  const events = (await r.text()).split("\\n\\n").filter((e) => e.trim());
  const out = [];
  for (const e of events) {
    const data = e.slice(5).trim();
    if (data !== "[DONE]") {
      const chunk = JSON.parse(data);
      if (chunk.choices.length && chunk.choices[0].finish_reason === "stop") {
        const entry = {token: "<|end|>", logprob: Math.log(0.9), bytes: [...new TextEncoder().encode("<|end|>")],
                       top_logprobs: [{token: "<|end|>", logprob: Math.log(0.9), bytes: []},
                                      {token: "S", logprob: Math.log(0.05), bytes: [83]}]};
        const extra = {...chunk, choices: [{index: 0, delta: {content: ""}, logprobs: {content: [entry]}, finish_reason: null}]};
        out.push("data: " + JSON.stringify(extra));
      }
    }
    out.push(e);
  }
  return new Response(out.join("\\n\\n") + "\\n\\n", {status: r.status, headers: r.headers});
};
"""


@pytest.mark.parametrize("width", WIDTHS)
def test_a_reply_ends_with_its_stop_token_and_an_empty_reply_says_so(page, width, tmp_path):
    _start(page, width)
    page.say("Sir")
    assert page.find("status").text.startswith("stop")
    reply = page.all("#transcript .msg.assistant")[-1]
    assert reply.find_elements("css selector", ".tok")  # some text before the end
    end = reply.find_elements("css selector", ".tok, .endtok")[-1]
    assert end.get_attribute("class") == "endtok" and end.text == END
    page.hover(end)
    tip = page.find("tip")
    assert tip.is_displayed() and END in tip.text
    # Folio's stream reports the stop token's probability (the page asks with
    # stream_options.include_stop_token): the end is coloured and its tip gives it.
    assert "p = " in tip.text and "does not report" not in tip.text
    assert 0.0 < float(end.get_attribute("data-p")) <= 1.0
    # A stream that reports it: the end token is coloured and hovered like any token.
    page.js(REPORT_THE_END_TOKEN)
    page.say("Speak")
    end = page.all("#transcript .msg.assistant")[-1].find_elements("css selector", ".endtok")
    assert len(end) == 1 and end[0].get_attribute("data-p") == "0.9000"
    page.scroll_to(end[0])
    page.hover(end[0])
    assert "p = 90.0%" in tip.text and "S" in tip.text
    assert END not in page.history()[-1]["content"]  # shown after the reply, not part of it
    page.screenshot(tmp_path / f"end-token-{width}.png")

    # An empty reply: a note in the bubble instead of a blank one, the stop token after it.
    _start(page, width, model="quiet")
    page.say("Sir")
    assert page.history()[-1] == {"role": "assistant", "content": ""}
    reply = page.all("#transcript .msg.assistant")[-1]
    note = reply.find_elements("css selector", ".note")
    assert len(note) == 1 and "empty reply" in note[0].text and note[0].is_displayed()
    assert reply.find_elements("css selector", ".endtok")[0].text == END
    assert page.fits()
    page.screenshot(tmp_path / f"empty-reply-{width}.png", show=note[0])


@pytest.mark.parametrize("width", WIDTHS)
def test_the_conversation_survives_a_reload_until_cleared(page, width, tmp_path):
    _start(page, width)
    page.say("Sir")
    page.say("Speak")
    before = page.history()
    tokens = [t.get_attribute("data-p") for t in page.all("#transcript .tok")]
    ends = len(page.all("#transcript .endtok"))
    assert tokens and ends == 2

    page.open(width, "chat", fresh=False)  # a reload
    assert page.history() == before
    assert _texts(page, "#transcript .msg.user") == ["Sir", "Speak"]
    assert [t.get_attribute("data-p") for t in page.all("#transcript .tok")] == tokens
    assert len(page.all("#transcript .endtok")) == ends
    assert len(page.all("#transcript .regen")) == 1
    # The attention view shows the last exchange again.
    page.wait.until(lambda b: page.js("return state.attn !== null"))
    assert page.fits()
    page.screenshot(tmp_path / f"reloaded-{width}.png", show=page.find("transcript"))
    # The restored turns are the context of the next message.
    page.js(RECORD_CHAT_REQUESTS)
    page.fill("seed", "1")
    page.say("hear")
    assert page.js("return window.sent")[-1]["messages"][:4] == before
    assert len(json.loads(page.js("return localStorage.getItem('folio-playground')"))["turns"]) == 3

    page.find("clear").click()
    assert page.all("#transcript .msg") == [] and page.history() == []
    assert page.js("return localStorage.getItem('folio-playground')") is None
    page.open(width, "chat", fresh=False)
    assert page.all("#transcript .msg") == [] and page.history() == []
