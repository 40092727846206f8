"""``dcase serve``: a local Gradio web page over a trained system (needs the ``serve`` extra: ``pip install
dcase[serve]``). Thin: every answer comes from ``dcase.api``.

- **Caption**: upload or record a clip -> its caption and the ranked candidates with their scores (final, retriever
  cosine, log-likelihood, fluency error probability when the filter is on).
- **Search**: type a query -> the best clips of the index (``dcase index``) with audio players.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dcase.errors import DcaseError, InputError

if TYPE_CHECKING:
    from dcase.api import Captioner, CaptionResult, Retriever

log = logging.getLogger(__name__)

MAX_RESULTS = 10  # audio players on the search tab
CANDIDATE_COLUMNS = ["rank", "caption", "final", "retriever cosine", "log-likelihood", "fluency P(error)", "samples"]


def _gradio() -> Any:
    try:
        import gradio as gr
    except ImportError as e:
        raise InputError("dcase serve needs gradio: pip install 'dcase[serve]' (or pip install gradio)") from e
    return gr


def caption_rows(result: CaptionResult) -> list[list[Any]]:
    """The candidates table of one ``CaptionResult``, best first."""

    def r(v: float | None) -> float | str:
        return "" if v is None else round(float(v), 4)

    return [
        [i, c.text + ("  (selected)" if c.selected else ""), r(c.final_score), r(c.encoder_score)]
        + [r(c.decoder_score), r(c.fluency_error_prob), c.count]
        for i, c in enumerate(result.candidates, start=1)
    ]


def _caption_handler(gr: Any, captioner: Captioner) -> Callable[[str | None], tuple[str, list[list[Any]]]]:
    """The Caption button: a clip's path -> its caption and candidates table."""

    def do_caption(path: str | None) -> tuple[str, list[list[Any]]]:
        if not path:
            raise gr.Error("upload or record a clip first")
        try:
            (res,) = captioner.caption([path], return_candidates=True)
        except DcaseError as e:
            raise gr.Error(str(e)) from e
        return res.caption, caption_rows(res)

    return do_caption


def _search_handler(gr: Any, retriever: Retriever) -> Callable[[str, float], list[Any]]:
    """The Search button: a query and k -> the results table and ``MAX_RESULTS`` audio player updates."""

    def do_search(query: str, k: float) -> list[Any]:
        if not query or not query.strip():
            raise gr.Error("type what to look for")
        try:
            hits = retriever.search(query, k=int(k))
        except DcaseError as e:
            raise gr.Error(str(e)) from e
        table = [[i, os.path.basename(h.file), round(h.score, 4), h.file] for i, h in enumerate(hits, start=1)]
        players = [
            gr.update(value=hits[i].file, label=f"{i + 1}. {os.path.basename(hits[i].file)}", visible=True)
            if i < len(hits)
            else gr.update(value=None, visible=False)
            for i in range(MAX_RESULTS)
        ]
        return [table, *players]

    return do_search


def build_app(captioner: Captioner | None, retriever: Retriever | None, title: str = "dcase") -> Any:
    """The Gradio Blocks app over a ``dcase.api.Captioner`` and/or a ``dcase.api.Retriever`` with a collection."""
    gr = _gradio()
    if captioner is None and retriever is None:
        raise InputError("give a system (--system) and/or an index (--index)")

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nAudio captioning (DCASE2024 Task 6) and text-to-audio search (Task 8).")
        if captioner is not None:
            with gr.Tab("Caption"):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip")
                go = gr.Button("Caption", variant="primary", elem_id="caption-button")
                caption = gr.Textbox(label="Caption", elem_id="caption-output", interactive=False)
                cands = gr.Dataframe(
                    headers=CANDIDATE_COLUMNS, label="Candidates, best first", elem_id="candidates", interactive=False
                )
                go.click(_caption_handler(gr, captioner), inputs=audio, outputs=[caption, cands])
        if retriever is not None and retriever.collection is not None:
            with gr.Tab("Search"):
                gr.Markdown(f"{len(retriever.collection)} indexed clips.")
                query = gr.Textbox(label="Query", placeholder="a dog barks in the distance", elem_id="query")
                most = min(MAX_RESULTS, len(retriever.collection))
                k = gr.Slider(1, most, value=min(5, most), step=1, label="Results")
                find = gr.Button("Search", variant="primary", elem_id="search-button")
                results = gr.Dataframe(
                    headers=["rank", "file", "similarity", "path"], label="Best clips", elem_id="results"
                )
                players = [gr.Audio(visible=False, interactive=False) for _ in range(MAX_RESULTS)]
                do_search = _search_handler(gr, retriever)
                find.click(do_search, inputs=[query, k], outputs=[results, *players])
                query.submit(do_search, inputs=[query, k], outputs=[results, *players])
    return app


def serve(
    system: str | None,
    index: str | None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    fluency_checker: str | None = "system",
    share: bool = False,
) -> None:
    """Load the system / index and run the web page until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _gradio()  # a clear error before loading models
    from dcase.api import Captioner, Retriever

    captioner = Captioner.from_pretrained(system, device=device, fluency_checker=fluency_checker) if system else None
    retriever = Retriever.load_index(index, device=device) if index else None
    title = "dcase: " + str((captioner.info.get("name") if captioner else None) or "search")
    app = build_app(captioner, retriever, title)
    coll = retriever.collection if retriever is not None else None
    allowed = sorted({os.path.dirname(f) for f in coll.files}) if coll is not None else []
    log.info("serving on http://%s:%d", host, port)
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=allowed, show_error=True)
