"""Maintainers' work: registry pins, the wasm package, releases (prepare, publish), the demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from teadist.api.configure import fetch_options_for, settings_for
from teadist.api.guard import boundary, text_arg
from teadist.api.models import fetch_model
from teadist.api.progress import Progress, reporter_for
from teadist.errors import UsageError
from teadist.settings import Settings

if TYPE_CHECKING:
    from teadist.pipelines.demo import DemoResult
    from teadist.release.prepare import PreparedRelease
    from teadist.release.publish import PublishReport
    from teadist.release.wasmpkg import PackageReport


@boundary
def pin(name: str, *, write: bool = False, force: bool = False, registry_dir: Path | str | None = None,
        settings: Settings | None = None) -> dict[str, object]:
    """Fill a registry entry's missing revision, size and sha256 from the Hub API (never weakening a pin
    unless ``force``); ``write`` edits the source tree's registry."""
    from teadist.release.pin import pin_entry

    settings = settings or settings_for()
    folder = None if registry_dir is None else Path(text_arg(registry_dir, "registry_dir"))
    return pin_entry(text_arg(name, "name", paths=False), fetch_options_for(settings, 1), write=write, force=force,
                     registry_dir=folder)


@boundary
def package_wasm(pkg_dir: Path | str, version: str, out: Path | str = "dist", js: Path | str | None = None,
                 ) -> PackageReport:
    """A reproducible ``tea-wasm-llm-VERSION.tar.gz`` (mtimes from SOURCE_DATE_EPOCH) with the browser
    model cache inside; its size breakdown."""
    from teadist.release.wasmpkg import package_wasm as pack
    from teadist.release.wasmpkg import parse_source_date_epoch
    from teadist.settings import resolve_release_settings
    from teadist.web import asset_files

    epoch = parse_source_date_epoch(resolve_release_settings().source_date_epoch)
    return pack(Path(text_arg(pkg_dir, "pkg_dir")), text_arg(version, "version", paths=False),
                Path(text_arg(out, "out")), None if js is None else Path(text_arg(js, "js")),
                source_date_epoch=epoch, bundled=asset_files())


@boundary
def prepare_release(tag: str, repo: str, config: Path | str = "manifests/release.json", out: Path | str = "dist", *,
                    cache_dir: Path | str | None = None, progress: Progress = None,
                    settings: Settings | None = None) -> PreparedRelease:
    """Gather what a release ships (models fetched through the cache and split, the index) in ``out``."""
    from teadist.release.prepare import prepare_release as prepare

    settings = settings or settings_for(cache_dir)
    reporter = reporter_for(progress)

    def get_model(name: str) -> tuple[Path, str | None]:
        result = fetch_model(name, progress=reporter, settings=settings)
        return Path(result.path), result.sha256  # the split is held to the sha256 the fetch verified

    return prepare(tag, repo, Path(text_arg(config, "config")), Path(text_arg(out, "out")), reporter, get_model)


@boundary
def publish_release(tag: str, repo: str, dist: Path | str = "dist", *, dry_run: bool = False, draft: bool = False,
                    upload_timeout: float = 3600, progress: Progress = None) -> PublishReport:
    """Publish exactly what ``dist``'s release index lists to the GitHub Release of ``tag``, converging.
    Needs GITHUB_TOKEN; honours GITHUB_API_URL and TEADIST_GITHUB_WRITE_INTERVAL."""
    from teadist.release.publish import Publisher, check_api_url, check_upload_timeout, check_write_interval
    from teadist.settings import resolve_release_settings

    check_upload_timeout(upload_timeout)  # numbers first: nothing is written before they are sound
    env = resolve_release_settings()
    check_write_interval(env.write_interval)
    if not env.github_token:
        raise UsageError("GITHUB_TOKEN is not set", hint="export GITHUB_TOKEN (in Actions: secrets.GITHUB_TOKEN)")
    check_api_url(env.github_api_url)  # never echoed with a user name or password in it
    publisher = Publisher(repo, tag, env.github_token, env.github_api_url, reporter_for(progress),
                          upload_timeout=upload_timeout, write_interval=env.write_interval)
    return publisher.publish(Path(text_arg(dist, "dist")), dry_run=dry_run, draft=draft)


@boundary
def demo(keep: Path | str | None = None, *, progress: Progress = None) -> DemoResult:
    """The main job end to end on a tiny generated model, offline, in a temporary home (or ``keep``)."""
    from teadist.pipelines.demo import run_demo

    return run_demo(reporter_for(progress), None if keep is None else Path(text_arg(keep, "keep")))
