"""The ``mmsearch`` command: parse, call the library, present. No search logic lives here."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mmsearch import demo as demo_module
from mmsearch import duplicates as dup
from mmsearch.config import IndexType, Language, Metric, Settings, load_settings
from mmsearch.distributed import RayError, RayOptions
from mmsearch.engine import MMSearch
from mmsearch.enrich import EnrichReport
from mmsearch.filters import FilterError
from mmsearch.filters import as_dict as filters_dict
from mmsearch.filters import build as build_filters
from mmsearch.ingest import IngestReport
from mmsearch.providers import ProviderError
from mmsearch.search import Mode, QueryError, check_options, check_query
from mmsearch.sources import SourceError, SourceItem
from mmsearch.store import Hit, StoreError

app = typer.Typer(
    help="Search image collections by text and by image (Milvus + vision/text models).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

_USER_ERRORS = (StoreError, QueryError, SourceError, ProviderError, RayError)


class _State:
    overrides: dict[str, Any] = {}
    debug: bool = False


def _settings(**more: Any) -> Settings:
    return load_settings(**{**_State.overrides, **more})


def _fail(exc: BaseException) -> NoReturn:
    if _State.debug:
        raise exc
    # One line whatever the terminal's width: a wrapped error splits in logs and greps.
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@app.callback()
def main(
    uri: Annotated[
        str | None,
        typer.Option(help="embedded:DIR (default), a Milvus Lite file (*.db) or a server URI."),
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection name.")] = None,
    provider: Annotated[str | None, typer.Option(help="Provider for vectors and text.")] = None,
    embedder: Annotated[str | None, typer.Option(help="Embedder (overrides --provider).")] = None,
    describer: Annotated[str | None, typer.Option(help="Describer (overrides --provider).")] = None,
    lang: Annotated[Language | None, typer.Option(help="Description language.")] = None,
    index_type: Annotated[IndexType | None, typer.Option(help="Vector index type.")] = None,
    metric: Annotated[Metric | None, typer.Option(help="Similarity metric.")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Options here apply to every command and override MMSEARCH_* and mmsearch.toml."""
    _State.overrides = {
        "uri": uri,
        "collection": collection,
        "provider": provider,
        "embedder": embedder,
        "describer": describer,
        "language": lang,
        "index_type": index_type,
        "metric": metric,
    }
    _State.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextlib.contextmanager
def _scratch_uri(name: str) -> Iterator[dict[str, Any]]:
    """A throwaway Milvus Lite file for demo and eval, unless the user chose a store (--uri,
    MMSEARCH_URI or mmsearch.toml)."""
    if "uri" in _settings().model_fields_set:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix=f"mmsearch-{name}-") as tmp:
        yield {"uri": str(Path(tmp) / f"{name}.db")}


def _progress_bar(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
        transient=False,
    )


def _reporter(bar: Progress, description: str) -> Any:
    """A progress callback that adds its task to ``bar`` on first use."""
    task: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not task:
            task.append(bar.add_task(description, total=total))
        bar.update(task[0], completed=done, total=total)

    return progress


def _run_index(
    mm: MMSearch,
    source: Path | list[SourceItem],
    limit: int | None,
    quiet: bool,
    ocr: bool | None = None,
    ray: RayOptions | None = None,
) -> IngestReport:
    """Index with progress bars: the images, then (with OCR on) reading their text."""
    with _progress_bar(quiet) as bar:
        return mm.index(
            source,
            limit=limit,
            progress=_reporter(bar, "indexing"),
            ocr=ocr,
            ocr_progress=_reporter(bar, "reading text"),
            ray=ray,
        )


def _show_report(report: IngestReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)


def _print_report(report: IngestReport) -> None:
    repeats = f"{report.duplicates} listed twice, " if report.duplicates else ""
    console.print(
        f"[bold green]{report.indexed}[/] indexed, {report.unchanged} unchanged, {repeats}"
        f"[bold {'red' if report.failed else 'green'}]{len(report.failed)}[/] failed "
        f"of {report.total} in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s)"
    )
    if report.failed:
        table = Table("skipped file", "reason", title="Skipped files", title_justify="left")
        for path, reason in report.failed:
            table.add_row(path, reason)
        console.print(table)
    if report.ocr is not None:
        _print_ocr(report.ocr)


def _print_ocr(report: EnrichReport) -> None:
    unread = f", {len(report.failed)} could not be read" if report.failed else ""
    console.print(
        f"text read in [bold green]{report.read}[/] photos ({report.with_text} hold text)"
        f"{unread} in {report.seconds:.1f} s"
    )
    for path, reason in report.failed:
        console.print(f"  not read: {path}: {reason}", highlight=False)


#: ``index``'s Ray options (``distributed.py``).
_RayFlag = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run the batches on Ray: a local Ray on this machine, or the cluster at "
        "--ray-address. Needs a Milvus server (the embedded one or a URI), not a Lite file.",
    ),
]
_RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="ADDRESS",
        help="With --ray (implied): the cluster, `auto` (the one this machine is in) or "
        "ray://HOST:10001.",
    ),
]
_Actors = Annotated[
    int | None,
    typer.Option(min=1, help="With --ray: model actors (default: one per GPU, or 2 CPUs)."),
]
_ActorCpus = Annotated[
    float | None,
    typer.Option(min=0.1, help="With --ray: CPUs per model actor (default: shared out)."),
]


@app.command()
def index(
    path: Annotated[
        Path, typer.Argument(help="A folder (recursive), a CSV (id,path,label) or an image.")
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Index only the first N images.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    ocr: Annotated[
        bool | None,
        typer.Option(
            "--ocr/--no-ocr",
            help="Then read the text in the photos not read yet (default: the ocr setting, on).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Say what it would take (files, requests, time, price) and change nothing.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ray: _RayFlag = False,
    ray_address: _RayAddress = None,
    actors: _Actors = None,
    actor_cpus: _ActorCpus = None,
) -> None:
    """Describe, embed and store images. Unchanged files already indexed are skipped. Then
    the text in the photos is read (OCR), as a pass of its own: the photos are searchable
    by their vectors before it ends, and an interrupted pass resumes."""
    on_ray = _ray_options(ray or ray_address is not None, ray_address, actors, actor_cpus)
    try:
        with MMSearch(settings=_settings(batch_size=batch_size)) as mm:
            if dry_run:
                plan = mm.plan_index(path, limit=limit)
            else:
                report = _run_index(mm, path, limit, quiet=as_json, ocr=ocr, ray=on_ray)
    except _USER_ERRORS as exc:
        _fail(exc)
    if dry_run:
        print(json.dumps(plan.as_dict(), indent=2) if as_json else plan.text())
    else:
        _show_report(report, as_json)


def _ray_options(
    on_ray: bool, address: str | None, actors: int | None, actor_cpus: float | None
) -> RayOptions | None:
    """``--ray`` and its cluster and pool options, or None for the local runner."""
    if not on_ray:
        if actors is not None or actor_cpus is not None:
            _fail(ValueError("--actors and --actor-cpus go with --ray"))
        return None
    return RayOptions(address=address, actors=actors, actor_cpus=actor_cpus)


def _hits_table(hits: list[Hit], title: str, copies: list[int] | None = None) -> Table:
    """Results as a table; descriptions wrap, files show their name (--json gives full paths).
    With ``copies`` (a collapsed list), a column says how many copies each result stands for."""
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score")
    table.add_column("label", overflow="fold")
    table.add_column("description", overflow="fold", ratio=3)
    table.add_column("taken", overflow="fold")
    table.add_column("file", overflow="fold", ratio=2)
    if copies is not None:
        table.add_column("copies", justify="right")
    matched = any(h.why.get("matches") for h in hits)
    if matched:
        table.add_column("words found", overflow="fold")
    for rank, hit in enumerate(hits, 1):
        name = Path(hit.origin).name
        row = [str(rank), f"{hit.score:.3f}", hit.label, hit.description, _taken(hit), name]
        if copies is not None:
            row.append(f"+{copies[rank - 1]}" if copies[rank - 1] else "")
        if matched:
            row.append(_words_found(hit))
        table.add_row(*row)
    return table


#: How the table names the fields a query's words were found in.
_FIELD_NAMES = {"ocr_text": "text", "file_name": "file", "label": "label"}


def _words_found(hit: Hit) -> str:
    """Where the query's words are in a hit: "text: 火锅; description: 狗"."""
    found: dict[str, list[str]] = {}
    for m in hit.why.get("matches", []):
        words = found.setdefault(_FIELD_NAMES.get(m["field"], m["field"]), [])
        if m["text"] not in words:
            words.append(m["text"])
    return "; ".join(f"{field}: {' '.join(words)}" for field, words in found.items())


def _taken(hit: Hit) -> str:
    """When and where, as a short line: "2023-07-14 · Paris, France"."""
    seconds = int(hit.fact("taken_at"))
    when = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d") if seconds else ""
    where = ", ".join(p for p in (hit.fact("place_city"), hit.fact("place_country")) if p)
    return " · ".join(p for p in (when, where) if p)


def _hit_dict(hit: Hit) -> dict[str, Any]:
    return asdict(hit)


@app.command()
def search(
    query: Annotated[
        str | None, typer.Argument(help="Text query, e.g. 棕色的狗, 海边 2023年7月.")
    ] = None,
    image: Annotated[Path | None, typer.Option(help="Image file to search with.")] = None,
    mode: Annotated[Mode | None, typer.Option(help="Search mode.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
    after: Annotated[str | None, typer.Option(help="Taken on or after: 2023-07-01.")] = None,
    before: Annotated[str | None, typer.Option(help="Taken before: 2023-08-01.")] = None,
    place: Annotated[str | None, typer.Option(help="City, region or country: Paris, 巴黎.")] = None,
    near: Annotated[str | None, typer.Option(help="LAT,LON,RADIUS: 48.85,2.35,5km.")] = None,
    camera: Annotated[str | None, typer.Option(help="Camera make or model: iPhone.")] = None,
    label: Annotated[str | None, typer.Option(help="Label (folder name).")] = None,
    orientation: Annotated[str | None, typer.Option(help="landscape, portrait or square.")] = None,
    sort: Annotated[str, typer.Option(help="relevance or date (newest first).")] = "relevance",
    literal: Annotated[
        bool, typer.Option(help="Take the text as it is: no dates or places read out of it.")
    ] = False,
    filter: Annotated[str, typer.Option(help='Milvus filter, e.g. label == "lion".')] = "",
    collapse: Annotated[
        bool, typer.Option(help="Show each set of duplicate photos once, with its copies count.")
    ] = False,
    ranking: Annotated[
        str,
        typer.Option(help="Text queries: fused (words and vectors), vector or lexical (words)."),
    ] = "fused",
    cutoff: Annotated[
        str, typer.Option(help="auto: stop where relevance ends (the score curve's bend); none.")
    ] = "none",
    min_score: Annotated[
        float | None, typer.Option(help="Least vector similarity a result needs.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Search by text (text2image, text2text) or by --image (image2image, image2text), with
    filters; with filters and no query, browse them newest first. Words naming a time or a
    place become filters ("海边 2023年7月", "beach in Paris") unless --literal."""
    options = dict(after=after, before=before, place=place, near=near, camera=camera)
    options |= dict(label=label, orientation=orientation)
    given, how = (image if image is not None else query), dict(mode=mode, filter=filter)
    try:
        check_options(sort, ranking, cutoff)  # before anything is opened
    except QueryError as exc:
        _fail(exc)
    try:
        _check_search(query, image, any(options.values()) or bool(filter))
        if given is not None:
            check_query(given, mode, k)
        with MMSearch(settings=_settings()) as mm:
            filters = build_filters(**options, find_place=lambda n: _places(mm).find(n))
            how |= dict(filters=filters, sort=sort, parse=not literal, ranking=ranking)
            how |= dict(cutoff=cutoff, min_score=min_score)
            results, copies = _find(mm, given, k, collapse, how)
    except (QueryError, FilterError) as exc:
        _fail(QueryError(f"{exc} (a text is the QUERY argument, an image --image FILE)"))
    except _USER_ERRORS as exc:
        _fail(exc)
    _show_results(results, given, as_json, copies)


def _check_search(query: str | None, image: Path | None, filtered: bool) -> None:
    if query is not None and image is not None:
        raise QueryError("give either a text query or --image FILE, not both")
    if query is None and image is None and not filtered:
        raise QueryError("give either a text query or --image FILE (or filters to browse)")


def _find(
    mm: MMSearch, given: Any, k: int, collapse: bool, how: dict[str, Any]
) -> tuple[Any, list[int] | None]:
    """Run the search; with ``collapse``, ``k`` distinct photos and each one's copies count
    (``duplicates.collapsed_search``)."""

    def run(n: int) -> Any:
        return mm.find(given, k=n, **how)

    if collapse:
        return dup.collapsed_search(mm.store, run, k)
    return run(k), None


def _places(mm: MMSearch) -> Any:
    from mmsearch.places import Gazetteer

    return Gazetteer.shared(mm.settings.cache_dir)


def _show_results(results: Any, given: Any, as_json: bool, copies: list[int] | None) -> None:
    """Hits as a table or JSON; ``copies`` (with --collapse) adds each hit's copies count."""
    understood = results.filters.understood
    if as_json:
        hits = [_hit_dict(h) for h in results.hits]
        for hit, n in zip(hits, copies or [], strict=False):
            hit["copies"] = n
        out = {
            "mode": results.mode.value if results.mode else None,
            "text": results.text,
            "ranking": results.ranking,
            "filters": filters_dict(results.filters),
            "hits": hits,
            "more": [_hit_dict(h) for h in results.more],
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return
    title = f"{results.mode.value}: {given}" if results.mode else "browse (newest first)"
    if understood:
        title += "  ·  " + ", ".join(f"{kind}: {text}" for kind, text in understood)
    console.print(_hits_table(results.hits, title, copies))
    if results.more:
        console.print(
            f"{len(results.more)} more past the point where relevance ends "
            "(--cutoff none shows them)"
        )


enrich_app = typer.Typer(
    help="Fill in what the stored photos lack, without embedding them again.",
    no_args_is_help=True,
)
app.add_typer(enrich_app, name="enrich")


@enrich_app.command("ocr")
def enrich_ocr(
    limit: Annotated[int | None, typer.Option(min=1, help="Read at most N photos.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read the text in the stored photos not read yet (signs, posters, receipts,
    screenshots; Chinese and English), so that searches find them by it. Resumable: an
    interrupted run goes on where it stopped; nothing is read twice."""
    try:
        with MMSearch(settings=_settings()) as mm, _progress_bar(as_json) as bar:
            report = mm.enrich_ocr(limit=limit, progress=_reporter(bar, "reading text"))
    except _USER_ERRORS as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_ocr(report)


@app.command()
def duplicates(
    threshold: Annotated[
        float,
        typer.Option(
            help="Copy similarity (0-1] at which two photos are near duplicates; higher "
            "finds fewer, closer copies."
        ),
    ] = dup.DEFAULT_THRESHOLD,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Find photos stored more than once: exact copies (same bytes) and near copies
    (re-encoded, resized, slightly cropped, rotated, another format)."""
    try:
        dup.check_threshold(threshold)  # before anything is opened
    except ValueError as exc:
        _fail(exc)
        return
    try:
        with MMSearch(settings=_settings()) as mm:
            report = _find_duplicates(mm, threshold, quiet=as_json)
    except _USER_ERRORS as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_duplicates(report)


def _find_duplicates(mm: MMSearch, threshold: float, *, quiet: bool) -> dup.DuplicateReport:
    with Progress(
        TextColumn("[bold]reading"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        disable=quiet,
        transient=True,
    ) as bar:
        task = bar.add_task("read", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return dup.find_duplicates(mm.store, threshold, progress=progress)


def _print_duplicates(report: dup.DuplicateReport) -> None:
    """Each group as a table: the representative (the copy to keep) first, then its copies
    with their similarity to it; full paths, as copies often share a name."""
    for n, group in enumerate(report.groups, 1):
        title = f"{n}. {group.kind} · {len(group.items)} copies"
        table = Table(title=title, title_justify="left")
        table.add_column("similarity", justify="right")
        table.add_column("kind")
        table.add_column("size", justify="right")
        table.add_column("file", overflow="fold")
        for item in group.as_dict()["items"]:
            size = f"{item['width']}×{item['height']}"
            table.add_row(f"{item['similarity']:.3f}", item["kind"], size, item["origin"])
        console.print(table)
    console.print(
        f"[bold]{len(report.groups)}[/] sets of duplicates ({report.duplicates} copies beyond "
        f"the first of each) among {report.items} images · threshold {report.threshold} · "
        f"{report.seconds:.1f} s"
    )
    if report.failed:
        table = Table("file", "reason", title="Not compared (moved or changed since indexing)")
        for path, reason in report.failed:
            table.add_row(path, reason)
        console.print(table)


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """How many images are indexed, and by which provider and index."""
    try:
        with MMSearch(settings=_settings()) as mm:
            info = mm.stats()
    except _USER_ERRORS as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return
    table = Table("key", "value", show_header=False)
    for key, value in info.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    public: Annotated[
        bool,
        typer.Option(help="Beyond loopback, let anyone who can connect search and view images."),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="A host name the server answers to (repeatable); IPs always work."),
    ] = None,
    watch: Annotated[
        list[Path] | None,
        typer.Option(help="A folder to keep in sync while serving (repeatable)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes (on embedded:DIR or a server URI; a Lite file takes one).",
        ),
    ] = 1,
) -> None:
    """Serve the web page (/) and the HTTP API (/api/v1, docs at /docs).

    Beyond loopback, reads need MMSEARCH_READ_TOKEN (or MMSEARCH_API_TOKEN) unless --public.
    With --workers N, N processes share the port and the store; one of them runs --watch.
    """
    import uvicorn

    from mmsearch.api import create_app
    from mmsearch.guard import is_loopback

    extra_hosts = {"allowed_hosts": [*_settings().allowed_hosts, *(allowed_host or [])]}
    settings = _settings(**extra_hosts)
    _check_workers(settings, workers)
    exposed = not is_loopback(host)
    if exposed and not public and settings.read_token is None and settings.api_token is None:
        _fail(
            ValueError(
                f"--host {host} would let anyone on the network see every indexed photo: set "
                "MMSEARCH_READ_TOKEN (readers sign in at /login), or pass --public"
            )
        )
    reads = "open to anyone" if public and settings.read_token is None else "need a token"
    console.print(
        f"mmsearch on [bold]http://{host}:{port}/[/] (API docs: /docs) · "
        f"{settings.uri} / {settings.collection}" + (f" · reads {reads}" if exposed else "")
    )
    for folder in watch or []:
        if not folder.is_dir():
            _fail(SourceError(f"{folder}: not a folder (--watch)"))
    if workers > 1:
        _serve_workers(settings, extra_hosts, host, port, public, watch or [], workers)
        return
    app_ = create_app(settings, listen_host=host, public=public, watch=watch or [])
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _check_workers(settings: Settings, workers: int) -> None:
    """Refuse several workers on a Milvus Lite file, saying why, before anything starts."""
    if workers > 1 and settings.is_lite:
        _fail(
            ValueError(
                f"--workers {workers} needs a Milvus server: {settings.uri} is a Milvus Lite "
                "file, which only one process can open; use embedded:DIR or a server URI"
            )
        )


def _serve_workers(
    settings: Settings,
    extra: dict[str, Any],
    host: str,
    port: int,
    public: bool,
    watch: list[Path],
    workers: int,
) -> None:
    """``serve --workers N``: N uvicorn processes on one port, each built by
    ``api.app_from_env`` from the options in its environment. An embedded server is started
    (or found) here first, and held while serving, so that the workers attach to the one
    server; a file lock elects the worker that runs --watch.

    Each worker's models get the cores divided among the workers (``OMP_NUM_THREADS``,
    unless set): N processes each spreading every call over all cores spin OpenMP threads
    against each other (measured: an image query cost 106 ms of CPU with two threads on
    two busy cores, 27 ms with one)."""
    import os

    import uvicorn

    from mmsearch import embedded
    from mmsearch.api import SERVE_OPTIONS_ENV, serve_options

    holder = None
    if settings.is_embedded:
        base = embedded.base_dir_of(settings.uri)
        try:
            embedded.ensure_server(
                base, idle_timeout=settings.embedded_idle_timeout, bin_cache=settings.cache_dir
            )
        except embedded.EmbeddedServerError as exc:
            _fail(StoreError(str(exc)))
        holder = embedded.add_holder(base)
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))
    with tempfile.TemporaryDirectory(prefix="mmsearch-serve-") as tmp:
        election = Path(tmp) / "watch.lock" if watch else None
        os.environ[SERVE_OPTIONS_ENV] = serve_options(
            {**_State.overrides, **extra},
            listen_host=host,
            public=public,
            watch=watch,
            watch_election=election,
        )
        try:
            uvicorn.run(
                "mmsearch.api:app_from_env",
                factory=True,
                workers=workers,
                host=host,
                port=port,
                log_level="warning",
            )
        finally:
            if holder is not None:
                embedded.remove_holder(holder)


@app.command()
def watch(
    folders: Annotated[list[Path], typer.Argument(help="Folders to keep in sync.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per change.")] = False,
) -> None:
    """Index folders, then keep them in sync: new and changed images are indexed within
    seconds, deleted ones removed. Stop with Ctrl+C; a restart catches up."""
    from mmsearch.watch import FolderWatcher

    settings = _settings()

    def caught_up(reports: list[Any]) -> None:
        for report in reports:
            _show_report(report, as_json)
        if not as_json:
            console.print(f"watching {', '.join(map(str, watcher.folders))} (Ctrl+C stops)")

    try:
        with MMSearch(settings=settings) as mm:
            watcher = FolderWatcher(mm, folders, follow_symlinks=settings.follow_symlinks)
            watcher.run(report=lambda change: _show_change(change, as_json), caught_up=caught_up)
    except KeyboardInterrupt:
        return
    except (*_USER_ERRORS, NotADirectoryError) as exc:
        _fail(exc)


def _show_change(change: Any, as_json: bool) -> None:
    indexed = change.indexed.as_dict() if change.indexed else None
    if as_json:
        out = {"indexed": indexed, "removed": change.removed, "deferred": change.deferred}
        print(json.dumps(out, ensure_ascii=False), flush=True)
        return
    if change.indexed:
        _print_report(change.indexed)
    for path in change.removed:
        console.print(f"removed {path}")


server_app = typer.Typer(
    help="The Milvus server that mmsearch runs for embedded:DIR URIs (the default store).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


def _embedded_dir() -> Path:
    from mmsearch import embedded

    settings = _settings()
    if not settings.is_embedded:
        _fail(
            StoreError(
                f"the configured URI {settings.uri!r} is not an embedded:DIR URI; "
                "this command manages only the server mmsearch starts itself"
            )
        )
    return embedded.base_dir_of(settings.uri)


@server_app.command("status")
def server_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Whether the server runs, where it listens, and its process ids (exit 3 if stopped)."""
    from mmsearch import embedded

    base = _embedded_dir()
    info = embedded.read_state(base)
    ready = embedded.status(base) is not None
    if as_json:
        print(json.dumps(asdict(info) | {"uri": info.uri} if info else {"base_dir": str(base)}))
    elif info:
        console.print(
            f"{'running' if ready else info.state}: {info.uri} · data {info.base_dir} · "
            f"pid {info.milvus_pid} (supervisor {info.supervisor_pid}) · "
            f"network isolation: {info.isolation}"
        )
    else:
        console.print(f"not running ({base})")
    if not ready:
        raise typer.Exit(3)


@server_app.command("start")
def server_start() -> None:
    """Start the server now (commands start it on first use anyway); it stops when idle
    for MMSEARCH_EMBEDDED_IDLE_TIMEOUT seconds (default 1800; 0 = never)."""
    from mmsearch import embedded

    base = _embedded_dir()
    try:
        settings = _settings()
        info, started = embedded.ensure_server(
            base, idle_timeout=settings.embedded_idle_timeout, bin_cache=settings.cache_dir
        )
    except embedded.EmbeddedServerError as exc:
        _fail(exc)
        return
    console.print(f"{'started' if started else 'already running'}: {info.uri} · data {base}")


@server_app.command("stop")
def server_stop() -> None:
    """Flush every collection and stop the server."""
    from mmsearch import embedded

    base = _embedded_dir()
    try:
        stopped = embedded.stop_server(base)
    except embedded.EmbeddedServerError as exc:
        _fail(exc)
        return
    console.print("stopped" if stopped else f"not running ({base})")


@app.command()
def reindex(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Describe and embed every stored image again with the configured providers.

    Use it after switching embedder (e.g. `mmsearch --embedder clip reindex`): images are
    read again from their stored paths; the old vectors are replaced only at the end.
    """
    settings = _settings()
    try:
        with MMSearch(settings=settings) as mm:
            if not mm.store.exists():
                raise StoreError(
                    f"collection {settings.collection!r} does not exist; nothing to reindex"
                )
            report = mm.reindex(progress=None)
    except _USER_ERRORS as exc:
        _fail(exc)
        return
    _show_report(report, as_json)


@app.command()
def drop(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the collection (the images on disk are not touched)."""
    settings = _settings()
    if not yes:
        typer.confirm(f"Delete collection {settings.collection!r} at {settings.uri!r}?", abort=True)
    try:
        with MMSearch(settings=settings) as mm:
            existed = mm.store.drop()
    except _USER_ERRORS as exc:
        _fail(exc)
        return
    console.print("deleted" if existed else "nothing to delete")


@app.command()
def demo(
    data: Annotated[
        Path | None,
        typer.Option(help="Folder or CSV to index instead of scikit-image's sample photos."),
    ] = None,
    query_image: Annotated[Path | None, typer.Option(help="Image for the image searches.")] = None,
    text: Annotated[str, typer.Option(help="Text for the text searches.")] = "棕色的狗",
    k: Annotated[int, typer.Option("-k", "--k", help="Results per search.")] = 3,
) -> None:
    """Index real photos and run the reference's four searches. Works offline.

    Uses a throwaway database unless --uri is given.
    """
    try:
        source = data if data is not None else demo_module.sample_photos()
        with _scratch_uri("demo") as overrides, MMSearch(settings=_settings(**overrides)) as mm:
            console.print(f"[bold]Indexing[/] {source if data else 'scikit-image sample photos'}")
            report = _run_index(mm, source, None, quiet=False)
            _print_report(report)
            q_image = query_image or demo_module.default_query_image(data)
            _demo_searches(mm, text, q_image, k, sample=data is None)
    except _USER_ERRORS as exc:
        _fail(exc)


def _demo_searches(mm: MMSearch, text: str, image: Path, k: int, *, sample: bool) -> None:
    """Searches the sample photos can answer, then the reference's four searches."""
    searches: list[tuple[Mode, Any]] = []
    if sample:
        searches += [(Mode.text2image, q) for q in demo_module.SAMPLE_QUERIES]
    searches += [(Mode.text2image, text), (Mode.text2text, text)]
    searches += [(Mode.image2image, image), (Mode.image2text, image)]
    for mode, query in searches:
        hits = mm.search(query, mode=mode, k=k)
        console.print(_hits_table(hits, f"{mode.value}: {query}"))
        if sample and query == text == "棕色的狗" and mode is Mode.text2text:
            console.print(
                "[dim]The sample photos hold no dog: 棕色的狗 (brown dog) shows the nearest "
                "they have. Index ../shared/datasets/reverse_image_search to see dogs.[/]"
            )


@app.command("eval")
def eval_command(
    data: Annotated[
        Path | None, typer.Argument(help="Labelled folder or CSV (id,path,label) to index.")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option(help="Labelled query images (folder or CSV) for image modes.")
    ] = None,
    captions: Annotated[
        Path | None, typer.Option(help="Captions TSV with image, lang and caption columns.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of the captioned images (default: beside TSV).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query.")] = 10,
    ranking: Annotated[
        str, typer.Option(help="Text queries: fused (as search ranks them), vector or lexical.")
    ] = "fused",
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Index labelled data and report recall@1/5/10 and MRR for each mode it allows.

    Uses a throwaway database unless a store is configured (--uri, MMSEARCH_URI or
    mmsearch.toml); captions then go to the collection <collection>_captions.
    """
    from mmsearch import eval as ev

    if data is None and captions is None:
        _fail(SourceError("give labelled DATA, --captions TSV, or both"))
        return
    scores: list[ev.Score] = []
    ingest: dict[str, Any] = {}
    run = dict(k=k, ranking=ranking, ingest=ingest, quiet=as_json)
    try:
        check_options("relevance", ranking, "none")
        with _scratch_uri("eval") as overrides:
            base = _settings(**overrides)
            if data is not None:
                scores += _eval_labels(base, data, queries, **run)
            if captions is not None:
                scores += _eval_captions(base, captions, images, **run)
    except (*_USER_ERRORS, ValueError) as exc:
        _fail(exc)
        return
    if as_json:
        out = {"scores": [s.as_dict() for s in scores], "ingest": ingest}
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        _print_scores(scores, ingest)


def _eval_labels(
    settings: Settings,
    data: Path,
    queries: Path | None,
    *,
    k: int,
    ranking: str,
    ingest: dict,
    quiet: bool,
) -> list[Any]:
    from mmsearch import eval as ev

    with MMSearch(settings=settings) as mm:
        items = ev.list_items(data)
        report = _run_index(mm, items, None, quiet=quiet)
        ingest[str(data)] = {**report.as_dict(), "collection": settings.collection}
        query_items = ev.list_items(queries) if queries else None
        return ev.evaluate_labels(mm, items, query_items, k=k, ranking=ranking)


def _eval_captions(
    settings: Settings,
    captions: Path,
    images: Path | None,
    *,
    k: int,
    ranking: str,
    ingest: dict,
    quiet: bool,
) -> list[Any]:
    """In a collection of its own, ``<collection>_captions`` (the captioned images are the
    whole search space); the output names it, as it stays when --uri is given."""
    from mmsearch import eval as ev

    own = settings.model_copy(update={"collection": f"{settings.collection}_captions"})
    with MMSearch(settings=own) as mm:
        rows = ev.read_captions(captions)
        folder = images or captions.parent / "images"
        items = [SourceItem(folder / name) for name in sorted({r[0] for r in rows})]
        report = _run_index(mm, items, None, quiet=quiet)
        ingest[str(captions)] = {**report.as_dict(), "collection": own.collection}
        return ev.evaluate_captions(mm, rows, folder, k=k, ranking=ranking)


def _print_scores(scores: list[Any], ingest: dict[str, Any]) -> None:
    from mmsearch import eval as ev

    table = Table("mode", "queries", "n", *[f"R@{x}" for x in ev.KS], "MRR")
    for sc in scores:
        recalls = [f"{sc.recall.get(x, 0):.3f}" for x in ev.KS]
        table.add_row(sc.mode, sc.queries, str(sc.n), *recalls, f"{sc.mrr:.3f}")
    console.print(table)
    for source, rep in ingest.items():
        console.print(
            f"ingest {source}: {rep['indexed']} images, {rep['images_per_second']} images/s, "
            f"collection {rep['collection']!r}"
        )


if __name__ == "__main__":
    app()
