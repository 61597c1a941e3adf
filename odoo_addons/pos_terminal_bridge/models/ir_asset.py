"""One JavaScript source for Odoo 18 and 19: keep only this version's folder of version-specific files."""

import re

from odoo import models, release

#: pos_terminal_bridge/static/<src|tests>/odoo<major>/...: files that only one major version of Odoo can load.
_VERSIONED = re.compile(r"^/?pos_terminal_bridge/static/(?:src|tests)/odoo(\d+)/")


class IrAsset(models.Model):
    _inherit = "ir.asset"

    def _get_paths(self, path_def, installed, *args, **kwargs):
        match = _VERSIONED.match(path_def)
        if match and int(match.group(1)) != release.version_info[0]:
            return []
        return super()._get_paths(path_def, installed, *args, **kwargs)
