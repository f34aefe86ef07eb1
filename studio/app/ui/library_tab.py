"""Library tab: every adapter with its facts and thumbnail; inspect, rename, delete, download, import."""

from __future__ import annotations

import gradio as gr

from studio.app import library
from studio.app.context import AppContext
from studio.app.ui.common import guard
from studio.errors import StudioError


def build(ctx: AppContext) -> gr.Tab:
    ui = guard(ctx.ws.root)
    with gr.Tab("Library", id="library", elem_id="tab-library") as tab:
        with gr.Row():
            table = gr.Dataframe(
                headers=library.COLUMNS, value=library.table(ctx.db), interactive=False, label="Adapters",
                elem_id="library-table", scale=3,
            )  # fmt: skip
            thumbs = gr.Gallery(
                value=library.thumbnails(ctx.ws, ctx.db), label="Samples", columns=4, height=300, object_fit="contain",
                elem_id="library-thumbs", scale=2,
            )  # fmt: skip
        with gr.Row():
            with gr.Column(scale=2):
                selected = gr.Dropdown(
                    library.names(ctx.db), value=None, label="Adapter", elem_id="library-selected"
                )
                with gr.Row():
                    kohya_dl = gr.DownloadButton(
                        "Download kohya .safetensors", elem_id="library-download", interactive=False
                    )
                    diffusers_dl = gr.DownloadButton(
                        "Download diffusers format", elem_id="library-download-diffusers", interactive=False
                    )
                with gr.Row():
                    new_name = gr.Textbox(label="New name", elem_id="library-new-name")
                    rename_btn = gr.Button("Rename", elem_id="library-rename")
                delete_btn = gr.Button("Delete…", variant="stop", elem_id="library-delete")
                with gr.Row(visible=False) as confirm_row:
                    confirm_text = gr.Markdown()
                    confirm_btn = gr.Button(
                        "Yes, delete it", variant="stop", elem_id="library-confirm-delete"
                    )
                    cancel_btn = gr.Button("Cancel", elem_id="library-cancel-delete")
                with gr.Row():
                    import_file = gr.File(label="Import an adapter (.safetensors)", file_types=[".safetensors"],
                                          elem_id="library-import", height=120)  # fmt: skip
                    import_name = gr.Textbox(label="Name (optional)")
                message = gr.Markdown(elem_id="library-message")
            with gr.Column(scale=3):
                details = gr.Code(
                    label="Metadata",
                    language=None,
                    interactive=False,
                    lines=18,
                    max_lines=30,
                    elem_id="library-metadata",
                )

        def refresh(choice: str | None = None):
            current = library.names(ctx.db)
            value = choice if choice in current else (current[0] if current else None)
            return (
                library.table(ctx.db),
                library.thumbnails(ctx.ws, ctx.db),
                gr.update(choices=current, value=value),
            )

        @ui
        def show(choice: str | None):
            if not choice:
                return "", gr.update(value=None, interactive=False), gr.update(value=None, interactive=False)
            kohya, diffusers = library.download_files(ctx.ws, ctx.db, choice)
            return (
                library.metadata_text(ctx.ws, ctx.db.adapter(choice)),
                gr.update(value=str(kohya), interactive=True),
                gr.update(value=str(diffusers) if diffusers else None, interactive=diffusers is not None),
            )

        refresh_outputs = [table, thumbs, selected]
        selected.change(show, selected, [details, kohya_dl, diffusers_dl], api_visibility="private")
        tab.select(ui(refresh), selected, refresh_outputs, api_visibility="private").then(
            show, selected, [details, kohya_dl, diffusers_dl], api_visibility="private"
        )

        def pick(evt: gr.SelectData):
            row = evt.row_value if evt is not None else None
            return row[0] if row else gr.skip()

        table.select(pick, None, selected, api_visibility="private")

        @ui
        def do_rename(choice, name):
            if not choice:
                raise StudioError("choose an adapter")
            row = library.rename(ctx.ws, ctx.db, choice, name)
            return (*refresh(row.name), f"Renamed to **{row.name}**.")

        rename_btn.click(
            do_rename, [selected, new_name], [*refresh_outputs, message], api_visibility="private"
        )

        def ask_delete(choice):
            if not choice:
                return gr.update(visible=False), ""
            return gr.update(visible=True), f"Delete **{choice}** and its files? This cannot be undone."

        @ui
        def do_delete(choice):
            library.delete(ctx.ws, ctx.db, choice)
            return (*refresh(), gr.update(visible=False), f"Deleted **{choice}**.")

        delete_btn.click(ask_delete, selected, [confirm_row, confirm_text], api_visibility="private")
        cancel_btn.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
        confirm_btn.click(
            do_delete, selected, [*refresh_outputs, confirm_row, message], api_visibility="private"
        )

        @ui
        def do_import(path, name):
            if not path:
                return gr.skip()
            row = library.import_file(ctx.ws, ctx.db, path, name or None)
            return (*refresh(row.name), None, f"Imported **{row.name}**.")

        import_file.upload(
            do_import,
            [import_file, import_name],
            [*refresh_outputs, import_file, message],
            api_visibility="private",
        )
    return tab
