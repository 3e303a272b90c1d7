"""The long-lived resources of one gateway process, opened in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import asyncpg
from lorafleet.adapters.aliases import AliasService
from lorafleet.adapters.service import AdapterService
from lorafleet.core.settings import GatewaySettings
from lorafleet.files.service import FileService
from lorafleet.finetune.jobs import FineTuningJobs
from lorafleet.gateway.auth import KeyAuthenticator
from lorafleet.gateway.batches.dispatcher import BatchDispatcher
from lorafleet.gateway.batches.service import Batches
from lorafleet.gateway.downloads import TransferSlots
from lorafleet.gateway.fleet.adapter_calls import AdapterCalls
from lorafleet.gateway.fleet.catalog import ModelCatalog
from lorafleet.gateway.fleet.holding import HeldRequests
from lorafleet.gateway.fleet.registry import WorkerRegistry
from lorafleet.gateway.metering.admission import Admission
from lorafleet.gateway.metering.sweeper import ReservationSweeper
from lorafleet.gateway.metering.writer import LedgerWriter
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.openai.forwarding import CacheSalts
from lorafleet.gateway.openai.relay import Relay
from lorafleet.gateway.responses_api.store import ResponseStore
from lorafleet.gateway.webhooks.delivery import WebhookDeliverer
from lorafleet.gateway.webhooks.service import WebhookEndpoints


@dataclass
class Services:
    settings: GatewaySettings
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    metrics: GatewayMetrics
    auth: KeyAuthenticator
    admission: Admission
    sweeper: ReservationSweeper
    catalog: ModelCatalog
    registry: WorkerRegistry
    adapter_calls: AdapterCalls
    ledger: LedgerWriter
    relay: Relay
    adapters: AdapterService
    aliases: AliasService
    cache_salts: CacheSalts
    responses: ResponseStore
    holds: HeldRequests
    files: FileService
    fine_tuning: FineTuningJobs
    batches: Batches
    downloads: TransferSlots
    uploads: TransferSlots
    webhooks: WebhookEndpoints | None = None
    webhook_deliverer: WebhookDeliverer | None = None
    dispatcher: BatchDispatcher | None = None  # set once the app exists (it calls the app's routes)
