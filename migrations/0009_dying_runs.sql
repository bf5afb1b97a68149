-- A run whose last attempt died with its worker (its lease expired, no attempts left) still owes
-- its task's on_failure steps. `failing` holds the error that ended it: such a run is queued once
-- more, to run only those steps with it as ${run.error}, and then fails. Should that worker die
-- too, the run fails without them (no loop).
ALTER TABLE runs ADD COLUMN failing text;
