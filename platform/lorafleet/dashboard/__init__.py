"""The tenant and operator dashboard, served by the gateway under ``/dashboard``."""

from pathlib import Path

from litestar.static_files import create_static_files_router
from lorafleet.dashboard.pages import DashboardController, DashboardFileUploadController, DashboardUploadController

static_files = create_static_files_router(path="/dashboard/static", directories=[Path(__file__).with_name("static")],
                                          include_in_schema=False)

__all__ = ["DashboardController", "DashboardFileUploadController", "DashboardUploadController", "static_files"]
