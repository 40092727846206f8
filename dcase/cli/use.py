"""Using a trained system: ``dcase caption``, ``dcase index``, ``dcase search``, ``dcase serve``, ``dcase plot``,
``dcase push``. Thin: each command calls ``dcase.api``, ``dcase.serve``, ``dcase.curves`` or ``dcase.hub``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer

from dcase.cli.common import user_errors


def caption(
    inputs: list[Path] = typer.Argument(..., help="Audio files and/or folders (a folder: its audio files)."),
    system: str = typer.Option(..., "--system", help="Task 6 system folder, or a Hub repository id in the cache."),
    out: Path = typer.Option(
        None, "--out", "-o", help="caps.csv (Task 6 format: file_name,caption_predicted) or caps.json; else stdout."
    ),
    candidates: bool = typer.Option(False, "--candidates", help="JSON: also write every scored candidate."),
    no_fluency_filter: bool = typer.Option(
        False, "--no-fluency-filter", help="Ignore the system's FENSE fluency checker (when it is not available here)."
    ),
    device: str = typer.Option(None, "--device", help="cpu | cuda | cuda:1 ... (default: cuda when available)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Caption audio files with a trained system: DAC codes, clip embedding, 30 samples, fluency filter, reranking.

    Examples:

      dcase caption demo_out/data/CLOTHO_v2.1/clotho_audio_files/evaluation --system demo_out/system --out caps.csv

      dcase caption my.wav other.flac --system demo_out/system --out caps.json --candidates

    The CSV is the Task 6 format: dcase score captions caps.csv --references clotho_captions_evaluation.csv
    """
    from dcase.api import Captioner, audio_files
    from dcase.errors import InputError
    from dcase.io import atomic_write_text, check_output
    from dcase.submission.formats import write_task6

    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise InputError(f"--out {out}: give a .csv (Task 6 format) or a .json file")
    if out is not None:
        check_output(out, overwrite)
    files = audio_files(inputs)
    if out is None or out.suffix.lower() == ".csv":
        seen: dict[str, Path] = {}
        for f in files:
            if f.name in seen:
                raise InputError(
                    f"{f} and {seen[f.name]} have the same file name; a Task 6 CSV names clips by file name. "
                    "Caption them separately or write --out caps.json (full paths)"
                )
            seen[f.name] = f
    cap = Captioner.from_pretrained(system, device=device, fluency_checker=None if no_fluency_filter else "system")
    results = cap.caption(files, return_candidates=True, progress=True)
    rows = [(Path(r.file).name, r.caption) for r in results]
    if out is None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file_name", "caption_predicted"])
        w.writerows(rows)
        typer.echo(buf.getvalue(), nl=False)
        return
    if out.suffix.lower() == ".csv":
        write_task6(rows, out, overwrite=overwrite)
    else:
        doc = [
            {
                "file": r.file,
                "file_name": Path(r.file).name,
                "caption": r.caption,
                **({"fallback": r.fallback, "candidates": [c.__dict__ for c in r.candidates]} if candidates else {}),
            }
            for r in results
        ]
        atomic_write_text(out, json.dumps(doc, indent=1))
    typer.echo(f"wrote {len(rows)} captions to {out}", err=True)


def index(
    inputs: list[Path] = typer.Argument(..., help="Audio folders (searched recursively) and/or files."),
    retriever: str = typer.Option(
        ..., "--retriever", help="Retriever checkpoint, Task 8 system or Task 6 system folder (or a Hub id)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder (created, or updated in place)."),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="Embed at most this many seconds of each file."),
    no_recursive: bool = typer.Option(False, "--no-recursive", help="Only the audio files directly in each folder."),
    device: str = typer.Option(None, "--device", help="cpu | cuda | ..."),
) -> None:
    """Build (or update) a faiss index of a folder of audio for text search.

    Rerunning it after adding, changing or removing files embeds only the new and changed files (each file is
    keyed by path, size, modification time and content hash).

    Example: dcase index ~/sounds --retriever demo_out/system --out sounds_index
    """
    from dcase.api import Retriever

    r = Retriever.from_pretrained(retriever, device=device)
    coll = r.index(inputs, out=out, recursive=not no_recursive, max_seconds=max_seconds, progress=True)
    typer.echo(f"{out}: {len(coll)} audio files indexed")


def search(
    query: str = typer.Argument(..., help="What to look for, e.g. 'a dog barks'."),
    index_dir: Path = typer.Option(..., "--index", help="Index folder written by dcase index."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    retriever: str = typer.Option(None, "--retriever", help="The index's retriever, if it moved since indexing."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    device: str = typer.Option(None, "--device", help="cpu | cuda | ..."),
) -> None:
    """Search an indexed audio folder by text: the k best files, best first, with their similarity.

    Example: dcase search "rain on a metal roof" --index sounds_index -k 5
    """
    from dcase.api import Retriever

    r = Retriever.load_index(index_dir, retriever=retriever, device=device)
    hits = r.search(query, k=k)
    if as_json:
        typer.echo(json.dumps([h.__dict__ for h in hits], indent=1))
        return
    for rank, h in enumerate(hits, start=1):
        typer.echo(f"{rank:>3}  {h.score:+.4f}  {h.file}")


def plot(
    run_dir: Path = typer.Argument(..., help="Training run folder (holding train_log.jsonl)."),
    out: Path = typer.Option(None, "--out", "-o", help="PNG to write (default: RUN_DIR/curves.png)."),
) -> None:
    """Draw a training run's curves (loss, learning rate, samples/s, validation metrics) to a PNG.

    Example: dcase plot demo_out/run/captioner/finetune_seed0
    """
    from dcase.curves import plot_curves

    typer.echo(str(plot_curves(run_dir, out)))


def push(
    source: Path = typer.Argument(..., help="Training run folder (its best checkpoint), checkpoint or system folder."),
    repo_id: str = typer.Argument(..., help="Hub repository id, owner/name (created when missing)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Only write the folder that would be uploaded (with its model card) here."
    ),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    token: str = typer.Option(None, "--token", help="Hub token (default: huggingface-cli login / HF_TOKEN)."),
    endpoint: str = typer.Option(None, "--endpoint", help="Another Hub endpoint (default: HF_ENDPOINT)."),
) -> None:
    """Share a checkpoint or system on the Hugging Face Hub, with a generated model card (README.md: data, config,
    scores from the run's records, licences of the weights it came from). Needs the network (not HF_HUB_OFFLINE).

    Examples:

      dcase push runs/enclap_ft myname/enclap-clotho

      dcase push demo_out/system myname/dcase-demo-system --out /tmp/upload   (inspect, no upload)

    Load it back anywhere: Captioner.from_pretrained("myname/dcase-demo-system").
    """
    from dcase.hub import prepare_upload
    from dcase.hub import push as push_to_hub

    if out is not None:
        typer.echo(str(prepare_upload(source, out, repo_id)))
        return
    typer.echo(push_to_hub(source, repo_id, private=private, token=token, endpoint=endpoint))


def serve(
    system: str = typer.Option(None, "--system", help="Task 6 system folder (or Hub id): the Caption tab."),
    index_dir: str = typer.Option(None, "--index", help="Index folder from dcase index: the Search tab."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: the whole network)."),
    port: int = typer.Option(7860, "--port", help="Port."),
    no_fluency_filter: bool = typer.Option(False, "--no-fluency-filter", help="Ignore the system's FENSE checker."),
    device: str = typer.Option(None, "--device", help="cpu | cuda | ..."),
) -> None:
    """A local web page: upload or record a clip to caption it (with the ranked candidates and their scores), type
    a query to search the indexed clips (with audio players). Needs the serve extra: pip install 'dcase[serve]'.

    Example: dcase serve --system demo_out/system --index demo_index   (then open http://127.0.0.1:7860)
    """
    from dcase.serve import serve as run_server

    run_server(system, index_dir, host, port, device, None if no_fluency_filter else "system")


def register(app: typer.Typer) -> None:
    """Add the commands that use a trained system to the root app."""
    app.command("caption")(user_errors(caption))
    app.command("index")(user_errors(index))
    app.command("search")(user_errors(search))
    app.command("plot")(user_errors(plot))
    app.command("push")(user_errors(push))
    app.command("serve")(user_errors(serve))
