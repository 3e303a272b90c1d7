"""The long-lived resources of one gateway process, opened in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import asyncpg

from lorafleet.adapters.service import AdapterService
from lorafleet.core.settings import Settings
from lorafleet.gateway.admission import Admission
from lorafleet.gateway.auth import KeyAuthenticator
from lorafleet.gateway.catalog import ModelCatalog
from lorafleet.gateway.ledger import LedgerWriter
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.openai.relay import Relay
from lorafleet.gateway.presence import GatewayPresence
from lorafleet.gateway.routing import WorkerRegistry


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    metrics: GatewayMetrics
    auth: KeyAuthenticator
    admission: Admission
    presence: GatewayPresence
    catalog: ModelCatalog
    registry: WorkerRegistry
    ledger: LedgerWriter
    relay: Relay
    adapters: AdapterService
