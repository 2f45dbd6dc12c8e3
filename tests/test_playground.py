"""The playground page in a real browser: Debian's chromium driven by Selenium and chromium-driver.

Nothing downloads a browser: `make install` installs chromium and
chromium-driver with apt-get when they are missing (as root, as in CI). The
test skips only where neither is possible (not root and chromium missing),
and says so.
"""

from __future__ import annotations

import os
import shutil

import pytest
from serving import TEXT, Server, random_gpt, save_run

from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import with_chat_tokens

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "playground-clé"  # not ASCII: the page must send it as UTF-8


def browser_or_skip(width: int = 1400, height: int = 900):
    """Debian's chromium, headless, through chromium-driver; the test skips (or fails, as root)
    with the reason where they are missing. The other playground test modules use it too."""
    missing = [p for p in (CHROMIUM, DRIVER) if not (os.path.exists(p) or shutil.which(p))]
    if missing:
        if os.geteuid() == 0:
            pytest.fail(
                f"{', '.join(missing)} missing although running as root: `make install` "
                "installs chromium and chromium-driver (apt-get)"
            )
        pytest.skip(
            f"{', '.join(missing)} missing and not root: apt-get install chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


def _tiny_run(tmp_path):
    """A random tiny character model's run directory (completion mode)."""
    tok = CharTokenizer.from_text(TEXT)
    return save_run(tmp_path / "tiny", random_gpt(tok.vocab_size, 16), tok)


def open_ready(browser, url: str):
    """Load the page and wait until it says ready; the wait, for what follows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: b.find_element(By.ID, "status").text == "ready")
    return wait


def test_playground_streams_a_reply_colours_tokens_and_shows_attention(tmp_path):
    from selenium.webdriver.common.by import By

    with Server(f"--checkpoint=tiny={_tiny_run(tmp_path)}") as server:
        browser = browser_or_skip()
        try:
            wait = open_ready(browser, server.url)
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
            tokens = browser.find_elements(By.CSS_SELECTOR, "#transcript .tok")
            assert len(tokens) == 400
            probs = [float(t.get_attribute("data-p")) for t in tokens]
            colours = {t.value_of_css_property("background-color") for t in tokens}
            assert all(0 < p <= 1 for p in probs) and len(colours) > 3
            assert "length" in browser.find_element(By.ID, "status").text
            # The attention panel shows the wei matrix of the text.
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#attn-tokens span")) == 16)
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            browser.quit()


# Records the body of every chat request the page sends.
RECORD_CHAT_REQUESTS = """
window.sent = [];
const realFetch = window.fetch;
window.fetch = (url, options) => {
  if (String(url).endsWith("/v1/chat/completions")) window.sent.push(JSON.parse(options.body));
  return realFetch(url, options);
};
"""


def test_playground_keeps_failed_turns_out_of_the_history_and_drops_old_turns_to_fit(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tok = with_chat_tokens(CharTokenizer.from_text(TEXT))
    run = save_run(tmp_path / "chat", random_gpt(tok.vocab_size, 32), tok)
    with Server(f"--checkpoint=chat={run}", "--api-key", KEY) as server:
        browser = browser_or_skip()
        try:
            browser.get(server.url + "/")
            wait = WebDriverWait(browser, 30)
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
        finally:
            browser.quit()


def test_the_page_fits_a_laptop_a_tablet_and_a_phone(tmp_path):
    """No sideways scrolling at any width, and the chat column takes most of a narrow window
    (at 800 px it was about 120 px wide; at 420 px the page scrolled sideways)."""
    with Server(f"--checkpoint=tiny={_tiny_run(tmp_path)}") as server:
        browser = browser_or_skip()
        try:
            open_ready(browser, server.url)
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
                assert browser.get_screenshot_as_png()[:8] == b"\x89PNG\r\n\x1a\n"
                browser.save_screenshot(str(tmp_path / f"playground-{width}.png"))
        finally:
            browser.quit()


class Playground:
    """One browser on one server's page, driven as a person would: type, click, hover.

    The other playground test modules share one server and one browser per module
    and drive them through this; `open` starts each test on a fresh page.
    """

    def __init__(self, browser, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser, self.url = browser, url
        self.wait = WebDriverWait(browser, 30)

    def open(self, width: int, model: str | None = None, *, fresh: bool = True) -> None:
        """The page at this window width, its storage emptied unless `fresh` is False."""
        from selenium.webdriver.support.ui import Select

        self.browser.set_window_size(width, 900)
        self.browser.get(self.url + "/")
        if fresh:
            self.js("localStorage.clear()")
            self.browser.get(self.url + "/")
        self.wait.until(lambda b: self.find("status").text == "ready")
        if model is not None:
            Select(self.find("model")).select_by_value(model)

    def find(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.browser.find_element(By.ID, element_id)

    def all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.browser.find_elements(By.CSS_SELECTOR, css)

    def js(self, script: str, *args):
        return self.browser.execute_script(script, *args)

    def fill(self, element_id: str, value: str) -> None:
        box = self.find(element_id)
        box.clear()
        box.send_keys(value)

    def idle(self) -> None:
        """Wait until the page has finished a request (the reply, or its error)."""
        self.wait.until(
            lambda b: not self.js("return state.busy") and self.find("send").is_enabled()
        )

    def click(self, element) -> None:
        element.click()
        self.idle()

    def say(self, text: str) -> None:
        self.fill("prompt", text)
        self.click(self.find("send"))

    def history(self) -> list[dict]:
        return self.js("return chatHistory()")

    def hover(self, element, dx: int | None = None, dy: int | None = None) -> None:
        """The mouse over `element`, at (dx, dy) from its centre when given."""
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.browser)
        if dx is None:
            chain.move_to_element(element)
        else:
            chain.move_to_element_with_offset(element, dx, dy)
        chain.perform()

    def fits(self) -> bool:
        """No sideways scrolling: the page is no wider than the window."""
        return self.js("return document.documentElement.scrollWidth <= window.innerWidth")

    def scroll_to(self, element) -> None:
        """Scroll the page so that `element` is in the middle of the window."""
        self.js("arguments[0].scrollIntoView({block: 'center'})", element)

    def screenshot(self, path, show=None) -> None:
        """Save the window as `path`, scrolled first so that the element `show` is in view."""
        if show is not None:
            self.scroll_to(show)
        assert self.browser.get_screenshot_as_png()[:8] == b"\x89PNG\r\n\x1a\n"
        self.browser.save_screenshot(str(path))
