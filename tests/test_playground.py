"""The playground page in a real browser: Debian's chromium driven by Selenium and chromium-driver.

Nothing downloads a browser: `make install` installs chromium and
chromium-driver with apt-get when they are missing (as root, as in CI). The
test skips only where neither is possible (not root and chromium missing),
and says so. The browser and the servers are shared by the playground tests
(tests/playground_page.py); each test starts with its page's storage and
the browser's log emptied.
"""

from __future__ import annotations

from playground_page import KEY, fresh_browser, save_png, server_url, waiting


def open_ready(browser, url: str):
    """Load the page and wait until it says ready; the wait, for what follows."""
    from selenium.webdriver.common.by import By

    browser.get(url + "/")
    wait = waiting(browser)
    wait.until(lambda b: b.find_element(By.ID, "status").text == "ready")
    return wait


def test_playground_streams_a_reply_colours_tokens_and_shows_attention(request):
    from selenium.webdriver.common.by import By

    url = server_url(request.config)  # "tiny" first: the model the page starts with
    browser = fresh_browser(request.config, url)
    wait = open_ready(browser, url)
    assert browser.find_element(By.ID, "mode").get_attribute("value") == "completion"
    max_tokens = browser.find_element(By.ID, "max_tokens")
    max_tokens.clear()
    max_tokens.send_keys("400")
    # Watch the page as it changes: the input disabled, tokens arriving in batches.
    browser.execute_script(
        """
        window.seen = {disabled: false, batches: 0};
        new MutationObserver(() => {
          if (document.getElementById('prompt').disabled) window.seen.disabled = true;
        }).observe(document.getElementById('prompt'), {attributes: true});
        new MutationObserver((records) => {
          if (records.some(r => [...r.addedNodes].some(n => n.className === 'tok')))
            window.seen.batches += 1;
        }).observe(document.getElementById('transcript'), {childList: true, subtree: true});
        """
    )
    browser.find_element(By.ID, "prompt").send_keys("First")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#transcript .tok")) > 0)
    wait.until(lambda b: b.find_element(By.ID, "prompt").is_enabled())  # re-enabled
    seen = browser.execute_script("return window.seen")
    assert seen["disabled"] and seen["batches"] > 1  # streamed, not all at once
    # Each token's probability and colour, read in one call rather than 800.
    tokens = browser.execute_script(
        """
        return [...document.querySelectorAll('#transcript .tok')].map(
          (t) => [t.getAttribute('data-p'), getComputedStyle(t).backgroundColor]);
        """
    )
    assert len(tokens) == 400
    probs = [float(p) for p, _ in tokens]
    colours = {colour for _, colour in tokens}
    assert all(0 < p <= 1 for p in probs) and len(colours) > 3
    assert "length" in browser.find_element(By.ID, "status").text
    # The attention panel shows the wei matrix of the text.
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#attn-tokens span")) == 16)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


# Records the body of every chat request the page sends.
RECORD_CHAT_REQUESTS = """
window.sent = [];
const realFetch = window.fetch;
window.fetch = (url, options) => {
  if (String(url).endsWith("/v1/chat/completions")) window.sent.push(JSON.parse(options.body));
  return realFetch(url, options);
};
"""


def test_playground_keeps_failed_turns_out_of_the_history_and_drops_old_turns_to_fit(request):
    from selenium.webdriver.common.by import By

    url = server_url(request.config, keyed=True)  # one chat model of block size 32, key KEY
    browser = fresh_browser(request.config, url)
    browser.get(url + "/")
    wait = waiting(browser)
    find = lambda element_id: browser.find_element(By.ID, element_id)  # noqa: E731
    history = lambda: browser.execute_script("return chatHistory()")  # noqa: E731
    errors = lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.error")]  # noqa: E731

    def say(text: str) -> None:
        find("prompt").clear()
        find("prompt").send_keys(text)
        find("send").click()

    def key(value: str) -> None:
        find("apikey").clear()
        find("apikey").send_keys(value)

    # Without the key the models cannot load: the page points at the key box.
    wait.until(lambda b: "API key box" in find("status").text)
    assert "needed" in find("apikey").get_attribute("class")
    browser.execute_script(RECORD_CHAT_REQUESTS)
    find("max_tokens").clear()
    find("max_tokens").send_keys("4")
    say("Sir")
    wait.until(lambda b: len(errors()) == 1)
    assert "API key box" in errors()[0]
    assert history() == [] and find("prompt").get_attribute("value") == "Sir"

    key(KEY)
    say("Sir")
    wait.until(lambda b: len(history()) == 2 and find("prompt").is_enabled())
    assert browser.execute_script("return window.sent")[-1]["messages"] == [
        {"role": "user", "content": "Sir"}
    ]
    # A request that fails (a wrong key: 401) leaves no turn behind.
    key("wrong")
    say("Speak")
    wait.until(lambda b: len(errors()) == 2 and find("prompt").is_enabled())
    assert "API key box" in errors()[1]
    assert len(history()) == 2 and find("prompt").get_attribute("value") == "Speak"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#transcript .msg.user")) == 1
    key(KEY)
    say("Speak")
    wait.until(lambda b: len(history()) == 4 and find("prompt").is_enabled())
    first_turn = history()[:2]
    assert browser.execute_script("return window.sent")[-1]["messages"] == [
        *first_turn,
        {"role": "user", "content": "Speak"},
    ]
    # A conversation longer than the context (32 tokens) leaves its oldest turns out.
    say("hear me speak, hear me")
    wait.until(lambda b: len(history()) == 6 and find("prompt").is_enabled())
    assert browser.execute_script("return window.sent")[-1]["messages"] == [
        {"role": "user", "content": "hear me speak, hear me"}
    ]
    assert browser.execute_script("return state.dropped") == 4
    faded = browser.find_elements(By.CSS_SELECTOR, "#transcript .msg.dropped")
    assert len(faded) == 4 and len(errors()) == 2
    assert "left out" in find("status").text
    uncaught = [e for e in browser.get_log("browser") if "Uncaught" in e["message"]]
    assert uncaught == []


def test_the_page_fits_a_laptop_a_tablet_and_a_phone(request, tmp_path):
    """No sideways scrolling at any width, and the chat column takes most of a narrow window
    (at 800 px it was about 120 px wide; at 420 px the page scrolled sideways)."""
    url = server_url(request.config)
    browser = fresh_browser(request.config, url)
    open_ready(browser, url)
    for width, share in ((1400, 0.35), (800, 0.6), (420, 0.85)):
        browser.set_window_size(width, 900)
        layout = browser.execute_script(
            """
            const chat = document.getElementById('chat').getBoundingClientRect();
            return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth,
                    chat: chat.width, top: chat.top,
                    controls: document.getElementById('controls').getBoundingClientRect().top};
            """
        )
        assert layout["scroll"] <= layout["inner"], (width, layout)  # no sideways scroll
        assert layout["chat"] >= share * layout["inner"], (width, layout)
        if width == 420:  # one column, the conversation first
            assert layout["top"] < layout["controls"], layout
        save_png(browser, tmp_path / f"playground-{width}.png")
