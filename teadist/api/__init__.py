"""teadist's Python API: what programs call (the TEA Python runtime), and what the CLI itself calls.

It never prints. Progress goes to ``progress``: a callable ``progress(description, done, total)``
(``total`` None when unknown) or a ``teadist.base.progress.Reporter`` (the CLI plugs tqdm in
that way); messages and warnings reach only a Reporter. Every failure is a ``TeadistError``
(``teadist.errors``) with a one-line ``message`` and a ``hint``. Settings come from the
arguments, then the environment (read once, in ``teadist.settings``), then the defaults.

    import teadist
    path = teadist.fetch("phi-4-mini")            # installed and verified; a pathlib.Path
    teadist.model_path("phi-4-mini")              # where the TEA runtimes would load it, or None

One module a job: ``models`` (fetch, find a model), ``files`` (split, assemble, verify, inspect),
``cache`` (list, du, repair, rm, prune, the registry), ``memory`` (does a model fit), ``web`` (serve,
web assets), ``maintain`` (pins, packages, releases, demo); beneath them ``guard`` (arguments,
errors), ``progress`` (callbacks) and ``configure`` (settings → the pipelines' objects). Import from
here: this module is the public surface.
"""

from __future__ import annotations

from teadist.api.cache import DiskUsage as DiskUsage
from teadist.api.cache import ListedModel as ListedModel
from teadist.api.cache import Listing as Listing
from teadist.api.cache import ModelEntry as ModelEntry
from teadist.api.cache import RegistryModel as RegistryModel
from teadist.api.cache import disk_usage as disk_usage
from teadist.api.cache import list_models as list_models
from teadist.api.cache import prune as prune
from teadist.api.cache import registry_models as registry_models
from teadist.api.cache import remove as remove
from teadist.api.cache import repair as repair
from teadist.api.configure import downloader_for as downloader_for
from teadist.api.configure import fetch_options_for as fetch_options_for
from teadist.api.configure import open_cache as open_cache
from teadist.api.configure import settings_for as settings_for
from teadist.api.files import Assembled as Assembled
from teadist.api.files import assemble as assemble
from teadist.api.files import inspect as inspect
from teadist.api.files import split as split
from teadist.api.files import verify as verify
from teadist.api.guard import boundary as boundary
from teadist.api.guard import size_arg as size_arg
from teadist.api.guard import text_arg as text_arg
from teadist.api.maintain import demo as demo
from teadist.api.maintain import package_wasm as package_wasm
from teadist.api.maintain import pin as pin
from teadist.api.maintain import prepare_release as prepare_release
from teadist.api.maintain import publish_release as publish_release
from teadist.api.memory import MAX_CONTEXT as MAX_CONTEXT
from teadist.api.memory import MemoryReport as MemoryReport
from teadist.api.memory import memory_report as memory_report
from teadist.api.models import fetch as fetch
from teadist.api.models import fetch_model as fetch_model
from teadist.api.models import find_model as find_model
from teadist.api.models import model_path as model_path
from teadist.api.progress import Progress as Progress
from teadist.api.progress import ProgressCallback as ProgressCallback
from teadist.api.progress import reporter_for as reporter_for
from teadist.api.web import Serving as Serving
from teadist.api.web import copy_web_assets as copy_web_assets
from teadist.api.web import open_server as open_server

__all__ = [
    "Assembled",
    "DiskUsage",
    "ListedModel",
    "Listing",
    "MemoryReport",
    "ModelEntry",
    "ProgressCallback",
    "RegistryModel",
    "Serving",
    "assemble",
    "copy_web_assets",
    "demo",
    "disk_usage",
    "fetch",
    "fetch_model",
    "find_model",
    "inspect",
    "list_models",
    "memory_report",
    "model_path",
    "open_server",
    "package_wasm",
    "pin",
    "prepare_release",
    "prune",
    "publish_release",
    "registry_models",
    "remove",
    "split",
    "verify",
]
