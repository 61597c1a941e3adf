from . import ir_asset
from . import pos_payment_method
from . import terminal_bridge_payment
