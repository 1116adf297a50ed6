"""Hatch build hook: compile the gettext catalogs (``newsletter/locale/*/LC_MESSAGES/*.po``) to ``.mo``
with Babel, so an installed wheel reads compiled catalogs (see `newsletter.i18n`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CompileCatalogs(BuildHookInterface):  # type: ignore[type-arg]
    """Writes a ``.mo`` next to each ``.po`` and includes it in the build (``.mo`` files are not in git)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        from babel.messages.mofile import write_mo
        from babel.messages.pofile import read_po

        root = Path(self.root)
        for po in sorted((root / "newsletter" / "locale").glob("*/LC_MESSAGES/*.po")):
            with po.open("rb") as handle:
                catalog = read_po(handle)
            mo = po.with_suffix(".mo")
            with mo.open("wb") as handle:
                write_mo(handle, catalog, use_fuzzy=False)
            build_data["force_include"][str(mo)] = str(mo.relative_to(root))
