"""The API's own description: the OpenAPI document, its bearer schemes, and Swagger UI served offline.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package and are served by the gateway
under ``/openapi/assets``: the docs page must work where the gateway (or the reader) cannot reach a
CDN. Routes name the credential they take with ``security = …`` on their controller, from the
requirements below, so generated clients and the "Authorize" button know which token goes where.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

OPENAPI_PATH = "/openapi"
ASSETS = "/assets"

API_KEY, ADMIN_TOKEN, METRICS_TOKEN = "apiKey", "adminToken", "metricsToken"
TENANT_SECURITY: list[SecurityRequirement] = [{API_KEY: []}]
ADMIN_SECURITY: list[SecurityRequirement] = [{ADMIN_TOKEN: []}]
# `{}` as an alternative: the token is asked for only when the operator set LORAFLEET_METRICS_TOKEN.
METRICS_SECURITY: list[SecurityRequirement] = [{METRICS_TOKEN: []}, {}]

SECURITY_SCHEMES: dict[str, SecurityScheme] = {
    API_KEY: SecurityScheme(type="http", scheme="bearer", bearer_format="sk_live_…",
                            description="A tenant's API key: `Authorization: Bearer sk_live_…`. Its scopes decide "
                                        "which routes it may call (403 names the missing one)."),
    ADMIN_TOKEN: SecurityScheme(type="http", scheme="bearer",
                                description="The operator's admin token (LORAFLEET_ADMIN_TOKEN; `lorafleet up` "
                                            "writes it to .lorafleet/demo.env)."),
    METRICS_TOKEN: SecurityScheme(type="http", scheme="bearer",
                                  description="LORAFLEET_METRICS_TOKEN, when the operator set one; otherwise "
                                              "these routes are open."),
}


class OfflineSwaggerRenderPlugin(SwaggerRenderPlugin):
    """Swagger UI whose script, styles and icon are the packaged files, served by this app."""

    def __init__(self, openapi_path: str = OPENAPI_PATH) -> None:
        base = f"{openapi_path}{ASSETS}"
        super().__init__(
            js_url=f"{base}/swagger-ui-bundle.js", css_url=f"{base}/swagger-ui.css",
            standalone_preset_js_url=f"{base}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{base}/favicon-32x32.png'>",
        )

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(create_static_files_router(path=ASSETS, directories=[Path(str(swagger_ui_path))],
                                                   include_in_schema=False, name="swagger_ui_assets"))


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="LoraFleet", version="0.1.0", path=OPENAPI_PATH, render_plugins=[OfflineSwaggerRenderPlugin()],
        description="OpenAI-compatible multi-LoRA inference with per-token billing.",
        components=Components(security_schemes=SECURITY_SCHEMES),
    )
