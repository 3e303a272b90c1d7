from lorafleet.gateway.admin.controller import AdminController

__all__ = ["AdminController"]
