from . import terminal_bridge
from . import terminal_bridge_terminal
from . import terminal_bridge_command
from . import terminal_bridge_payment
from . import terminal_bridge_feedback
from . import terminal_bridge_pairing
from . import terminal_bridge_nonce
from . import ir_websocket
