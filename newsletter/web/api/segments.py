"""API: try a segment rule against the subscriber list."""

from __future__ import annotations

from fastapi import APIRouter

from newsletter.segments import audience, count_audience, parse_segment
from newsletter.web.api.schemas import SegmentIn, SegmentPreview, SubscriberOut
from newsletter.web.deps import DB

router = APIRouter(prefix="/segments", tags=["segments"])
SAMPLE = 10


@router.post("/preview", response_model=SegmentPreview)
def preview(body: SegmentIn, session: DB) -> SegmentPreview:
    """How many subscribers a rule selects (only active, unsuppressed ones ever are) and the first 10."""
    rule = parse_segment(body.rule)
    sample = list(session.scalars(audience(rule).limit(SAMPLE)))
    return SegmentPreview(count=count_audience(session, rule), sample=[SubscriberOut.of(s) for s in sample])
