"""The erasure job, split by phase (worker/erase/job.py runs them in order).

- vocabulary.py: what a job claims, computes and reports (Job, Result, Outcome, Busy);
- claim.py: batching, claiming and fencing, database only;
- run.py: decode, audit, unlearn and store the new weights, torch only;
- promotion.py: the guardrail and promotion decision, a pure function;
- record.py: the one transaction that writes the result.
"""

from worker.erase.claim import batch_wait
from worker.erase.job import erase_request
from worker.erase.vocabulary import Busy, Outcome

__all__ = ["Busy", "Outcome", "batch_wait", "erase_request"]
