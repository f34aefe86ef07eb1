"""Launch the studio app: options, exposure warnings, Gradio setup confined to the workspace."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
EXPOSURE_WARNING = (
    "WARNING: the studio is reachable {where} WITHOUT a password. Anyone who can reach it can "
    "upload files, start training and download your adapters. Add --auth user:password."
)


@dataclass
class AppConfig:
    workspace: str = "studio-workspace"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auth: str | None = None
    max_upload_mb: int = 1024
    max_files: int = 2000
    queue_size: int = 64
    compile: str | None = None  # torch.compile mode of the Mix tab's UNet (studio.generate.FastPath.parse)
    graphs: bool = True  # else the Mix tab launches each GPU kernel eagerly (studio.generate.FastPath)
    gpus: int | None = None  # training jobs at once, one per GPU (None: every visible GPU, or 1 on CPU)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = AppConfig()
    parser.add_argument(
        "--host", default=defaults.host, help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=defaults.port, help="port (default 7860)")
    parser.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (needs internet)"
    )
    parser.add_argument(
        "--auth", metavar="USER:PASS", help="require this login (strongly advised with --host/--share)"
    )
    parser.add_argument("--workspace", metavar="DIR", default=defaults.workspace,
                        help="where datasets, adapters, jobs, samples and the database live (default ./studio-workspace)")  # fmt: skip
    parser.add_argument("--max-upload-mb", type=int, default=defaults.max_upload_mb, metavar="MB",
                        help="largest upload, zips counted inflated (default 1024)")  # fmt: skip
    parser.add_argument("--max-files", type=int, default=defaults.max_files, metavar="N",
                        help="most files in one upload (default 2000)")  # fmt: skip
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size, metavar="N",
                        help="requests that may wait for a generation; more get 'queue full' (default 64)")  # fmt: skip
    parser.add_argument("--compile", nargs="?", const="reduce-overhead", metavar="MODE",
                        help="compile the Mix tab's UNet (a GPU's fast path; each new size compiles once; "
                        "MODE as in 'studio generate --help', default reduce-overhead)")  # fmt: skip
    parser.add_argument("--no-graphs", dest="graphs", action="store_false",
                        help="the Mix tab launches each GPU kernel eagerly (default: replayed as CUDA graphs)")  # fmt: skip
    parser.add_argument("--gpus", type=int, metavar="N",
                        help="run up to N training jobs at once, one per GPU (default: every visible GPU; "
                        "1 on a machine without CUDA, where N > 1 runs N CPU jobs at once)")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> AppConfig:
    return AppConfig(
        workspace=args.workspace, host=args.host, port=args.port, share=args.share, auth=args.auth,
        max_upload_mb=args.max_upload_mb, max_files=args.max_files, queue_size=args.queue_size,
        compile=args.compile, graphs=args.graphs, gpus=args.gpus,
    )  # fmt: skip


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise StudioError("--auth takes USER:PASSWORD, both non-empty")
    return user, password


def exposure_warning(config: AppConfig) -> str | None:
    """The warning to print when the app is reachable from other machines without a login."""
    if config.auth:
        return None
    if config.share:
        return EXPOSURE_WARNING.format(where="from the internet (--share)")
    if config.host not in LOCAL_HOSTS:
        return EXPOSURE_WARNING.format(where=f"from the network ({config.host})")
    return None


def build_app(ctx):
    """The Gradio Blocks of the three tabs and the API endpoints."""
    import gradio as gr

    from studio.app.ui import api_endpoints, library_tab, mix_tab, train_tab

    # delete_cache: Gradio keeps a copy of every served or uploaded file; drop copies older than a day.
    with gr.Blocks(title="Style-adapter studio", delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            f"## Style-adapter studio\nWorkspace: `{_shown(ctx.ws.root)}` · train a style LoRA, mix adapters, "
            "export kohya files."
        )
        with gr.Tabs():
            train_tab.build(ctx)
            mix_tab.build(ctx)
            library_tab.build(ctx)
        api_endpoints.build(ctx)
    return demo


def _shown(path: Path) -> str:
    """The workspace as the user typed it: relative to where the app was started when inside it."""
    try:
        return "./" + path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def prepare_environment(workspace: Path) -> None:
    """Before gradio is imported: its uploads go inside the workspace, and nothing phones home."""
    os.environ["GRADIO_TEMP_DIR"] = str(workspace / "uploads" / ".gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def launch(config: AppConfig, *, block: bool = True):
    """Start the app; returns (demo, context) when ``block`` is False (tests)."""
    from studio.app.workspace import Workspace

    auth = parse_auth(config.auth)
    ws = Workspace.open(config.workspace)
    prepare_environment(ws.root)
    import gradio as gr

    from studio.app.context import AppContext
    from studio.app.uploads import UploadLimits
    from studio.generate import FastPath

    limits = UploadLimits(max_bytes=config.max_upload_mb << 20, max_files=config.max_files)
    fast = FastPath.choose(config.compile, config.graphs)
    from studio.app.jobs import device_slots

    ctx = AppContext.open(str(ws.root), limits, fast, slots=device_slots(config.gpus))
    print(f"studio: workspace {ws.root}", flush=True)
    warning = exposure_warning(config)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    demo = build_app(ctx)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=4)
    try:
        demo.launch(
            server_name=config.host,
            server_port=config.port,
            share=config.share,
            auth=auth,
            allowed_paths=[str(ws.root)],
            blocked_paths=[
                str(ws.db_path),
                str(ws.root / "studio.db-wal"),
                str(ws.root / "studio.db-shm"),
                str(ws.root / ".browser-secret"),
            ],  # fmt: skip
            max_file_size=config.max_upload_mb * gr.FileSize.MB,
            prevent_thread_lock=not block,
            show_error=True,
            theme=gr.themes.Soft(),
            footer_links=["api"],
        )
    except BaseException:
        ctx.close()
        raise
    if not block:
        return demo, ctx
    ctx.close()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description="The style-adapter studio web app.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        launch(config_from_args(args))
    except StudioError as exc:
        print(f"studio: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the port is taken, or the address cannot be bound
        print(
            f"studio: error: cannot serve on {args.host}:{args.port} ({exc}); pass another --port",
            file=sys.stderr,
        )
        return 1
    return 0
