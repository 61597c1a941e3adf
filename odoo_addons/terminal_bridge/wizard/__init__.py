from . import terminal_bridge_pair_wizard
