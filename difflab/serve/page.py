"""The sampling page, on gradio (the ``ui`` extra). The only module of difflab that imports gradio.

:func:`build_page` lays out the controls that fit the chosen run's kind and streams a :class:`~difflab.serve.jobs.Job`
to the page; :func:`launch` serves it on 127.0.0.1 by default, without analytics and with system fonts, so
the page loads nothing from outside the machine.
"""

from __future__ import annotations

import html
import itertools
import sys
import threading
import time
import traceback
from pathlib import Path

import gradio as gr

from ..samplers import SAMPLERS
from .jobs import CANCELLED, DONE, Job, RunCache, job_folder
from .request import ALL_CLASSES, TEST_SPLIT, UPLOAD, Form, InputError, default_prompts, parse_form
from .runs import CLASS, SUPER_RESOLUTION, TEXT, RunEntry

FRAME_INTERVAL = 0.15      # seconds between two live frames sent to the browser

SAMPLER_HELP = {
    "ddpm": "ddpm: fresh noise at every step; needs many steps",
    "ddim": "ddim: deterministic at eta 0; 20-50 steps",
    "dpm++2m": "dpm++2m: DPM-Solver++(2M), deterministic; 10-25 steps",
    "heun": "heun: EDM's Heun, two network passes per step",
}

INTRO = """# difflab: sample a trained diffusion model
Pick a run and settings, press **Sample**, and watch the image emerge: sampling starts from pure noise
x_T and removes a little of it at every step. Left: **x_t**, the image at the current step; right:
**predicted x_0**, the network's guess of the finished image from x_t."""

HELP = """**Steps**: how many denoising steps (network passes) the sampler takes; more is slower and usually
better. **eta** (DDIM only): 0 is deterministic, 1 adds as much fresh noise as DDPM. **Seed**: image i of seed
s always starts from the same noise, so the same settings give the same images. **Guidance weight** w:
classifier-free guidance, eps = (1 + w) eps(class or prompt) - w eps(nothing); 0 is the plain conditional
model, larger values follow the class or prompt more closely at the cost of variety.
Every request can be repeated from the command line with the `difflab sample` command shown under the result."""

CSS = """
.dl-pixels img { image-rendering: pixelated; image-rendering: crisp-edges; object-fit: contain; }
.dl-status { padding: 10px 14px; border-radius: 8px; font-size: 15px; line-height: 1.5; }
.dl-idle { background: var(--block-background-fill); color: var(--body-text-color-subdued); }
.dl-running { background: #eef4ff; color: #1d3b75; }
.dl-done { background: #ecf8ef; color: #1b5e20; }
.dl-error { background: #fdecec; color: #9b1c1c; border: 1px solid #f5b5b5; }
.dl-stopped { background: #fff6e0; color: #7a4b00; }
.dl-bar { height: 8px; background: #d6e2fb; border-radius: 4px; margin-top: 6px; overflow: hidden; }
.dl-bar > div { height: 100%; background: #3b6fd8; }
.dl-note { font-size: 13px; margin-top: 4px; }
.dl-caption { margin-bottom: 0; }
.dl-caption p { font-size: 14px; }
#command textarea { font-family: var(--font-mono); font-size: 13px; }
"""


def _status(kind: str, text: str, fraction: float | None = None, notes=()) -> str:
    bar = f'<div class="dl-bar"><div style="width:{100 * fraction:.1f}%"></div></div>' if fraction is not None else ""
    more = "".join(f'<div class="dl-note">{html.escape(n)}</div>' for n in notes)
    return f'<div class="dl-status dl-{kind}" id="dl-{kind}">{html.escape(text)}{bar}{more}</div>'


def _command(cmd: str | None) -> str:
    return "(uploaded inputs have no difflab sample equivalent)" if cmd is None else cmd


class PageServer:
    """What all the page's sessions share: the runs, the loaded networks and the running jobs."""

    def __init__(self, entries: list[RunEntry], device, out_dir: Path):
        self.entries = {e.name: e for e in entries}
        self.cache, self.device, self.out_dir = RunCache(device), device, Path(out_dir).resolve()
        self.jobs: dict[str, Job] = {}
        self.numbers = itertools.count(1)
        self.lock = threading.Lock()

    def controls(self, name: str):
        """Updates of every control for run ``name``: the run's defaults, only the controls that fit its kind."""
        e = self.entries[name]
        s, kind = e.config.sample, e.kind
        k = e.config.model.num_classes
        n_label = {CLASS: "Number of images", TEXT: "Images per prompt",
                   SUPER_RESOLUTION: "Number of test images"}.get(kind, "Number of images")
        n_value = 8 if kind in (TEXT, SUPER_RESOLUTION) else s.n
        return (gr.update(value=e.summary()), gr.update(value=s.sampler), gr.update(value=s.steps,
                label=f"Steps (1 to {e.config.diffusion.num_timesteps})"),
                gr.update(value=s.eta, visible=s.sampler == "ddim"), gr.update(value=s.seed),
                gr.update(value=n_value, label=n_label, visible=True),
                gr.update(visible=kind == CLASS, value=ALL_CLASSES,
                          choices=[ALL_CLASSES] + [str(i) for i in range(k or 0)]),
                gr.update(visible=kind == CLASS, value=False),
                gr.update(visible=kind == TEXT, value=default_prompts() if kind == TEXT else ""),
                gr.update(visible=e.guidance_available, value=s.guidance_scale or 0.0),
                gr.update(visible=kind == SUPER_RESOLUTION, value=TEST_SPLIT),
                gr.update(visible=False, value=None),
                gr.update(visible=kind == SUPER_RESOLUTION, value=None),
                gr.update(visible=kind == SUPER_RESOLUTION, value=None),
                gr.update(visible=kind == SUPER_RESOLUTION), gr.update(visible=kind == SUPER_RESOLUTION))

    def sample(self, name, sampler, steps, eta, seed, n, class_choice, grid_by_class, prompts, guidance, source,
               uploads, request: gr.Request):
        """The Sample button: a generator of (status, x_t, x_0, result, inputs, targets, gif, png, gif file, cmd)."""
        skip = gr.skip()
        keep = (skip,) * 9

        def fail(message):
            return (_status("error", message), *keep)

        entry = self.entries.get(name)
        if entry is None:
            yield fail(f"Run: choose one of the listed runs (got {name!r})")
            return
        form = Form(sampler=sampler, steps=steps, seed=seed, n=n, eta=eta, class_choice=class_choice or ALL_CLASSES,
                    grid_by_class=bool(grid_by_class), prompts=prompts or "", guidance=guidance,
                    low_res_source=source or TEST_SPLIT, uploads=tuple(_paths(uploads)))
        try:
            req = parse_form(entry, form)
            yield (_status("running", f"Loading {entry.name} ...", 0.0), *keep)
            run = self.cache.get(entry)
            job = Job(run, req, job_folder(self.out_dir, next(self.numbers), entry), self.device)
        except InputError as e:
            yield fail(str(e))
            return
        except (ValueError, OSError, RuntimeError) as e:
            yield fail(f"Could not load {entry.name}: {_first_line(e)}")
            return
        except Exception as e:    # one line on the page, the traceback on the server's console
            traceback.print_exc(file=sys.stderr)
            yield fail(f"Could not start: unexpected {type(e).__name__}: {_first_line(e)} (see the console)")
            return
        session = request.session_hash if request is not None else ""
        with self.lock:
            self.jobs[session] = job
        try:
            yield from self._stream(job.start())
        finally:
            with self.lock:
                if self.jobs.get(session) is job:
                    del self.jobs[session]

    def _stream(self, job: Job):
        skip = gr.skip()
        yield (_status("running", f"Sampling {job.n} images ...", 0.0), None, None, *(skip,) * 7)
        seen, last = 0, 0.0
        try:
            while not job.finished:
                seen = job.wait(seen, timeout=0.5)
                frame = job.frame
                if frame is None or job.finished or time.monotonic() - last < FRAME_INTERVAL:
                    continue
                last = time.monotonic()
                x_t, x_0 = job.frame_images(frame)
                where = f"step {frame.step} of {frame.steps}" + (f", batch {frame.batch} of {frame.batches}"
                                                                 if frame.batches > 1 else "")
                text = f"Sampling {job.n} images: {where} ({time.perf_counter() - job.started:.1f} s)"
                yield (_status("running", text, frame.fraction), x_t, x_0, *(skip,) * 7)
        finally:
            job.cancel()        # the browser went away: stop the worker (no effect on a finished job)
        if job.state == DONE:
            o = job.outcome
            frames = job.frame_images(job.frame) if job.frame is not None else (skip, skip)
            text = (f"Done: {o.images} images in {o.seconds:.1f} s, {o.nfe} network passes each. "
                    f"Files: {_shown(o.grid.parent)}")
            yield (_status("done", text, notes=o.notes), *frames, str(o.grid),
                   str(o.inputs) if o.inputs else None, str(o.targets) if o.targets else None,
                   str(o.gif) if o.gif else None, gr.update(value=str(o.grid), interactive=True),
                   gr.update(value=str(o.gif) if o.gif else None, interactive=o.gif is not None),
                   _command(job.request.command()))
        elif job.state == CANCELLED:
            f = job.frame
            where = f" at step {f.step} of {f.steps}" if f is not None else ""
            yield (_status("stopped", f"Stopped{where}. Nothing was written; press Sample to start again."),
                   *(skip,) * 9)
        else:
            yield (_status("error", f"Sampling failed: {job.error}"), *(skip,) * 9)

    def stop(self, request: gr.Request):
        with self.lock:
            job = self.jobs.get(request.session_hash if request is not None else "")
        if job is not None:
            job.cancel()


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _picture(elem_id: str, height: int) -> gr.Image:
    """An output image shown with crisp (nearest-neighbour) enlargement; its caption is a Markdown line above."""
    return gr.Image(show_label=False, type="filepath", format="png", elem_id=elem_id, interactive=False,
                    elem_classes="dl-pixels", height=height, buttons=["fullscreen"])


def _paths(uploads) -> list[str]:
    if not uploads:
        return []
    items = uploads if isinstance(uploads, (list, tuple)) else [uploads]
    return [str(getattr(u, "name", u)) for u in items]


def build_page(entries: list[RunEntry], *, device, out_dir: Path) -> gr.Blocks:
    """The page for ``entries`` (at least one); sampling on ``device``, files written under ``out_dir``."""
    if not entries:
        raise ValueError("no runs to serve")
    server = PageServer(entries, device, out_dir)
    first = entries[0]
    with gr.Blocks(title="difflab serve", analytics_enabled=False) as page:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                run = gr.Dropdown([(f"{e.name} ({e.kind})", e.name) for e in entries], value=first.name, label="Run",
                                  elem_id="run", info=f"{len(entries)} run{'s' if len(entries) > 1 else ''} found")
                info = gr.Markdown(elem_id="run-info")
                sampler = gr.Dropdown([(SAMPLER_HELP.get(s, s), s) for s in sorted(SAMPLERS)], label="Sampler",
                                      elem_id="sampler")
                with gr.Row():
                    steps = gr.Number(label="Steps", elem_id="steps", precision=None)
                    seed = gr.Number(label="Seed", elem_id="seed", precision=None)
                    n = gr.Number(label="Number of images", elem_id="n", precision=None)
                eta = gr.Slider(0.0, 1.0, step=0.05, label="eta (DDIM: 0 = deterministic)", elem_id="eta")
                class_choice = gr.Dropdown(label="Class", elem_id="class", choices=[ALL_CLASSES], value=ALL_CLASSES)
                grid_by_class = gr.Checkbox(label="One row per class (Number of images = columns)",
                                            elem_id="grid-by-class")
                prompts = gr.Textbox(label="Prompts, one per line (one grid row each)", lines=4, elem_id="prompts")
                guidance = gr.Number(label="Guidance weight w (0 = none)", elem_id="guidance", precision=None)
                source = gr.Radio([TEST_SPLIT, UPLOAD], label="Low-resolution input", elem_id="low-res-source",
                                  info="the first images of the dataset's test split, or pictures of your own")
                uploads = gr.File(label="Low-resolution pictures", file_count="multiple", file_types=["image"],
                                  elem_id="uploads")
                with gr.Row():
                    go = gr.Button("Sample", variant="primary", elem_id="sample")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Accordion("What do these settings do?", open=False):
                    gr.Markdown(HELP)
            with gr.Column(scale=3, min_width=360):
                status = gr.HTML(_status("idle", "Choose settings and press Sample."), elem_id="status")
                with gr.Row():
                    with gr.Column(min_width=160):
                        gr.Markdown("**x_t** at this step", elem_classes="dl-caption")
                        live_xt = _picture("live-xt", 230)
                    with gr.Column(min_width=160):
                        gr.Markdown("**predicted x_0** at this step", elem_classes="dl-caption")
                        live_x0 = _picture("live-x0", 230)
                gr.Markdown("**Samples**: the PNG grid", elem_classes="dl-caption")
                result = _picture("result", 320)
                with gr.Row():
                    with gr.Column(min_width=160):
                        in_caption = gr.Markdown("**Low-resolution inputs**", elem_classes="dl-caption")
                        low_in = _picture("inputs", 180)
                    with gr.Column(min_width=160):
                        target_caption = gr.Markdown("**Targets**: the test images", elem_classes="dl-caption")
                        targets = _picture("targets", 180)
                with gr.Row():
                    dl_grid = gr.DownloadButton("Download grid (PNG)", elem_id="download-grid", interactive=False)
                    dl_gif = gr.DownloadButton("Download denoising GIF", elem_id="download-gif", interactive=False)
                command = gr.Textbox(label="The same images from the command line", elem_id="command", lines=2,
                                     max_lines=6, interactive=False, buttons=["copy"])
                with gr.Accordion("Denoising GIF: x_t (left) and predicted x_0 (right) at every step", open=False):
                    gif = _picture("gif", 260)
        controls = [info, sampler, steps, eta, seed, n, class_choice, grid_by_class, prompts, guidance, source, uploads,
                    low_in, targets, in_caption, target_caption]
        quiet = dict(queue=False, show_progress="hidden")     # instant updates: no spinner over the controls
        run.change(server.controls, run, controls, **quiet)
        page.load(server.controls, run, controls, **quiet)
        sampler.change(lambda s: gr.update(visible=s == "ddim"), sampler, eta, **quiet)
        source.change(lambda s: (gr.update(visible=s == UPLOAD), gr.update(visible=s != UPLOAD)), source, [uploads, n],
                      **quiet)
        grid_by_class.input(lambda g: (gr.update(label="Images per class" if g else "Number of images"),
                                       gr.update(interactive=not g)), grid_by_class, [n, class_choice], **quiet)
        outputs = [status, live_xt, live_x0, result, low_in, targets, gif, dl_grid, dl_gif, command]
        go.click(server.sample, [run, sampler, steps, eta, seed, n, class_choice, grid_by_class, prompts, guidance,
                                 source, uploads], outputs, show_progress="hidden", concurrency_limit=1,
                 concurrency_id="sampling")
        stop.click(server.stop, None, None, **quiet)
    return page


THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                   font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


def launch(page: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, out_dir: Path) -> str:
    """Serve ``page`` in a background thread; the URL. Analytics off, no share link, system fonts only."""
    page.queue(default_concurrency_limit=1)
    _, url, _ = page.launch(server_name=host, server_port=port, share=False, quiet=True, show_error=False,
                            prevent_thread_lock=True, inbrowser=False, allowed_paths=[str(out_dir)],
                            footer_links=[], ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
                            theme=gr.themes.Default(primary_hue="blue", **THEME_FONTS), css=CSS)
    return url
