"""The playground's attention map in a real browser: labelled with its tokens on both axes,
the hovered row outlined, and a note when the text is longer than the model reads.

One server (with a tiny completion model, block size 16) and one browser serve the
playground tests (tests/playground_page.py); each test runs at a laptop's and a
phone's width, starts with the page's storage emptied, and saves a screenshot.
"""

from __future__ import annotations

import pytest
from playground_page import BLOCK, Playground, playground

WIDTHS = [1400, 420]


@pytest.fixture
def page(request) -> Playground:
    """The shared browser on the shared keyless server's page."""
    return playground(request.config)


def _complete(page: Playground, prompt: str, max_tokens: int) -> list[str]:
    """Generate a completion and wait for the attention view of the whole text; its tokens."""
    page.fill("max_tokens", str(max_tokens))
    page.fill("seed", "1")
    page.say(prompt)
    n = min(BLOCK, len(prompt) + max_tokens)
    page.wait.until(lambda b: page.js("return state.attn && state.attn.tokens.length") == n)
    page.wait.until(lambda b: len(page.all("#attn-map .lab.y")) == n)
    # A refresh scheduled while the reply streamed may still redraw the map: wait it out.
    page.wait.until(lambda b: page.js("return !state.attnTimer && !state.attnPending"))
    return page.js("return state.attn.tokens")


def _shown(token: str) -> str:
    """A token as the map's axes label it: whitespace made visible, at most 5 characters."""
    s = token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u00b7")
    return s[:4] + "\u2026" if len(s) > 5 else s


def _marked_row(page: Playground) -> dict:
    """Which row the outline and the bold labels mark, and where the outline is."""
    return page.js(
        """
        const row = document.getElementById('attn-row'), map = document.getElementById('attn-map');
        const canvas = document.getElementById('heatmap').getBoundingClientRect();
        const box = row.getBoundingClientRect();
        return {row: Number(row.dataset.row), visible: row.offsetParent !== null,
                labels: [...map.querySelectorAll('.lab.on')].map((l) => Number(l.dataset.index)),
                top: box.top - canvas.top, height: box.height, cell: canvas.height / state.attn.tokens.length};
        """
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_the_map_is_labelled_with_its_tokens_and_marks_the_hovered_row(page, width, tmp_path):
    page.open(width, "tiny")
    tokens = _complete(page, "Fir", 3)  # 6 tokens: every one labelled on both axes
    assert len(tokens) == 6
    for axis in ("y", "x"):
        # Read in one call: a redraw between two calls would leave the first labels stale.
        labels = page.js(
            "return [...document.querySelectorAll(arguments[0])].map((l) => [Number("
            "l.dataset.index), l.innerText, l.checkVisibility({opacityProperty: true, "
            "visibilityProperty: true})])",
            f"#attn-map .lab.{axis}",
        )
        assert [index for index, _, _ in labels] == list(range(6))
        assert [text for _, text, _ in labels] == [_shown(t) for t in tokens]
        assert all(shown for _, _, shown in labels)  # as a person sees them
    assert not page.find("attn-window").is_displayed()  # the whole text is shown
    # The last token's row is marked until a row is hovered.
    marked = _marked_row(page)
    assert marked["visible"] and marked["row"] == 5 and marked["labels"] == [5, 5]
    # Hovering the map's third row marks it: the outline sits on that row, its labels bold.
    canvas = page.find("heatmap")
    page.scroll_to(canvas)
    size = canvas.size["height"]
    page.hover(canvas, 0, int(2.5 * size / 6 - size / 2))
    marked = _marked_row(page)
    assert marked["row"] == 2 and marked["labels"] == [2, 2]
    assert (
        abs(marked["top"] - 2 * marked["cell"]) <= 3 and abs(marked["height"] - marked["cell"]) <= 3
    )
    assert "row 2" in page.find("attn-note").text
    page.screenshot(tmp_path / f"attention-row-{width}.png")
    # Hovering a token of the text marks its row too.
    page.hover(page.all("#attn-tokens span")[4])
    assert _marked_row(page)["row"] == 4
    assert page.fits()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_text_longer_than_the_context_is_shown_as_a_window_and_says_so(page, width, tmp_path):
    page.open(width, "tiny")
    tokens = _complete(page, "First", 30)  # 35 tokens: the model reads the last 16
    assert len(tokens) == BLOCK and page.js("return state.attn.offset") == 35 - BLOCK
    note = page.find("attn-window")
    assert note.is_displayed() and "the last 16 of 35 tokens" in note.text
    assert len(page.all("#attn-map .lab.y")) == BLOCK
    # The tokens' titles count positions in the whole text, not in the window.
    first = page.all("#attn-tokens span")[0].get_attribute("title")
    assert first.startswith(f"position {35 - BLOCK}")
    assert page.fits()
    page.screenshot(tmp_path / f"attention-window-{width}.png", show=note)
    # A shorter text afterwards shows whole again, and the note goes.
    _complete(page, "Fir", 3)
    assert not page.find("attn-window").is_displayed()
