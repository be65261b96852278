"""Running a job: plan (layout, tier), roles from the MPI world (topology), run, summary, preemption."""

from .plan import JobPlan, plan_job
from .run import run_job
from .summary import JobSummary

__all__ = ["JobPlan", "plan_job", "run_job", "JobSummary"]
