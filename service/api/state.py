"""What the lifespan builds and hands to every handler."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.config import Settings
from service.jobs.store import JobStore
from service.memory import MemoryBudget
from service.metrics import Metrics
from service.pipeline.footprints import FootprintLimits, FootprintService
from service.pipeline.intake import Intake
from service.pipeline.service import JobService
from service.pipeline.tile_workers import TileWorkers
from service.runtime.repository import ModelRepository


@dataclass
class AppState:
    """The server's shared resources, owned by the lifespan."""

    settings: Settings
    metrics: Metrics
    repository: ModelRepository
    store: JobStore
    jobs: JobService
    intake: Intake
    draining: bool = False
    notes: dict[str, str] = field(default_factory=dict)
    # Memory held by requests and jobs in flight (see Settings.memory_budget_mb).
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(2**62, 2**62))
    footprints: FootprintService = field(init=False)
    # Processes drawing map tiles of stored jobs, started on the first map request.
    tiles: TileWorkers = field(init=False)

    def __post_init__(self) -> None:
        if not hasattr(self, "footprints"):
            self.footprints = FootprintService(self.store, FootprintLimits())
        if not hasattr(self, "tiles"):
            self.tiles = TileWorkers.for_store(self.store)
