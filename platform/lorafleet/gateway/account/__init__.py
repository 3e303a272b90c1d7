from lorafleet.gateway.account.controller import AccountController

__all__ = ["AccountController"]
