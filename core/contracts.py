"""Names other systems rely on: the model-store name, environment variables, Prometheus metrics.

Why one module: dashboards, alert rules, the compose file and the Kubernetes manifests name these
strings, and the service, the flows and the tests must agree with them; a name changes here or
nowhere (tests/deploy checks the dashboards and rules against :data:`METRICS`). Pure Python.
"""

from __future__ import annotations

MODEL_NAME = "robustdx-classifier"
ENV_MODEL_TAG = "ROBUSTDX_MODEL_TAG"
ENV_SERVICE_HOSTS = "ROBUSTDX_SERVICE_HOSTS"  # hosts the flows may send the admin token to (comma-separated)

# --- Prometheus metric names (the exporter adds ``_total`` / ``_bucket`` suffixes as usual) -----
PREDICTIONS = "robustdx_predictions"  # counter -> robustdx_predictions_total{class}
CONFIDENCE = "robustdx_confidence"  # histogram: top-class probability
MARGIN = "robustdx_margin"  # histogram: top-1 minus top-2 probability
REFERRALS = "robustdx_referrals"  # counter -> robustdx_referrals_total: below the confidence threshold
DRIFT_MMD = "robustdx_drift_mmd"  # gauge: unbiased MMD² live window vs reference embeddings
DRIFT_MMD_P = "robustdx_drift_mmd_p_value"  # gauge: its permutation p-value
DRIFT_KS = "robustdx_drift_ks_statistic"  # gauge: KS statistic on the positive-class score
DRIFT_KS_P = "robustdx_drift_ks_p_value"  # gauge: its p-value
DRIFT_PSI = "robustdx_drift_psi"  # gauge: PSI on the positive-class score
DRIFT_WINDOW = "robustdx_drift_window_size"  # gauge: live samples in the sliding window
ADV_FLIP_RATIO = "robustdx_adversarial_flip_ratio"  # gauge: fraction of sampled requests whose label PGD flips
ROBUST_MARGIN = "robustdx_robust_margin"  # gauge: mean logit margin of the predicted class after PGD
ROBUST_SAMPLES = "robustdx_robustness_samples"  # counter -> robustdx_robustness_samples_total
IG_DELTA = "robustdx_ig_convergence_delta"  # histogram: |IG convergence delta| (logit units)
MONITOR_HEARTBEAT = "robustdx_monitor_heartbeat_timestamp_seconds"  # gauge: unix time of the monitor loop's last turn
MONITOR_ERRORS = "robustdx_monitor_errors"  # counter -> robustdx_monitor_errors_total: failed metric computations
MONITOR_DROPPED = "robustdx_monitor_dropped"  # counter -> robustdx_monitor_dropped_total: samples of a replaced model
MODEL_INFO = "robustdx_model_info"  # gauge = 1 for the serving model {version, regime, dataset, tag}
BATCH_SIZE = "robustdx_batch_size"  # histogram: images per forward pass of /predict (service/batching.py)
EXPLAIN_REFUSED = "robustdx_explain_refused"  # counter {reason} -> robustdx_explain_refused_total: busy / rate / deadline
FEEDBACK = "robustdx_feedback"  # counter {class, agrees} -> robustdx_feedback_total: clinician labels received
FEEDBACK_AGREEMENT = "robustdx_feedback_agreement"  # gauge: share of all feedback that confirms the prediction
FEEDBACK_PENDING = "robustdx_feedback_pending"  # gauge: referred, stored predictions no clinician has answered
FEEDBACK_PENDING_AGE = "robustdx_feedback_pending_oldest_seconds"  # gauge: age of the oldest of them
INFERENCE_LOG_UP = "robustdx_inference_log_up"  # gauge: 1 while the inference log's database takes writes
INFERENCE_LOG_WRITTEN = "robustdx_inference_log_written"  # counter -> _total: predictions written to the log
INFERENCE_LOG_DROPPED = "robustdx_inference_log_dropped"  # counter -> _total: predictions not logged (queue full)
LABEL_REASON = "reason"

# --- pushed by the flows to a Prometheus Pushgateway (job "robustdx-flows"), when one is configured ---
FLOW_LAST_RUN = "robustdx_flow_last_run_timestamp_seconds"  # gauge {flow, outcome}
FLOW_DURATION = "robustdx_flow_duration_seconds"  # gauge {flow}: wall time of the last run
PROMOTION_LAST = "robustdx_promotion_last_timestamp_seconds"  # gauge {decision}: promoted / rejected / rolled_back
CANDIDATE_SCORE = "robustdx_candidate_score"  # gauge {metric}: last candidate's validation scores
PRODUCTION_SCORE = "robustdx_production_score"  # gauge {metric}: the serving model's scores in the same evaluation
PUSH_JOB = "robustdx-flows"
ENV_PUSHGATEWAY = "ROBUSTDX_PUSHGATEWAY"

LABEL_CLASS = "class"
LABEL_AGREES = "agrees"  # "true" / "false": the feedback confirms the prediction
INFO_LABELS = ("version", "regime", "dataset", "tag")

METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    PREDICTIONS: ("counter", (LABEL_CLASS,), "Predictions served, by predicted class."),
    CONFIDENCE: ("histogram", (), "Top-class probability of each prediction."),
    MARGIN: ("histogram", (), "Top-1 minus top-2 class probability of each prediction."),
    REFERRALS: ("counter", (), "Predictions below the confidence threshold (refer to clinician)."),
    DRIFT_MMD: ("gauge", (), "Unbiased MMD^2 between the live embedding window and the bundle's reference."),
    DRIFT_MMD_P: ("gauge", (), "Permutation p-value of the MMD test (small = drift)."),
    DRIFT_KS: ("gauge", (), "Two-sample KS statistic of the positive-class score, live window vs reference."),
    DRIFT_KS_P: ("gauge", (), "p-value of the KS test."),
    DRIFT_PSI: ("gauge", (), "Population stability index of the positive-class score."),
    DRIFT_WINDOW: ("gauge", (), "Live samples in the drift window."),
    ADV_FLIP_RATIO: ("gauge", (), "Fraction of sampled live images whose prediction a PGD attack at the serving eps flips."),
    ROBUST_MARGIN: ("gauge", (), "Mean logit margin of the predicted class on the PGD-attacked sample (< 0 = flipped)."),
    ROBUST_SAMPLES: ("counter", (), "Live images attacked by the background robustness probe."),
    IG_DELTA: ("histogram", (), "Absolute Integrated-Gradients convergence delta of /explain (logit units)."),
    MONITOR_HEARTBEAT: ("gauge", (), "Unix time of the background monitor's last loop turn (stalls when it dies)."),
    MONITOR_ERRORS: ("counter", (), "Drift or robustness computations of the background monitor that failed."),
    MONITOR_DROPPED: ("counter", (), "Live samples dropped because they came from a model replaced by a reload."),
    MODEL_INFO: ("gauge", INFO_LABELS, "1 for the model being served."),
    BATCH_SIZE: ("histogram", (), "Images per forward pass of /predict (requests batched while the model was busy)."),
    EXPLAIN_REFUSED: ("counter", (LABEL_REASON,), "/explain requests refused: busy (429), rate (429) or deadline (503)."),
    FEEDBACK: ("counter", (LABEL_CLASS, LABEL_AGREES), "Clinician feedback received, by confirmed class and agreement."),
    FEEDBACK_AGREEMENT: ("gauge", (), "Share of all clinician feedback that confirms the model's prediction."),
    FEEDBACK_PENDING: ("gauge", (), "Referred predictions with a stored image that no clinician has answered yet."),
    FEEDBACK_PENDING_AGE: ("gauge", (), "Age in seconds of the oldest referred prediction still awaiting feedback."),
    INFERENCE_LOG_UP: ("gauge", (), "1 while the inference log's database accepts writes, 0 while it is down."),
    INFERENCE_LOG_WRITTEN: ("counter", (), "Predictions written to the inference log."),
    INFERENCE_LOG_DROPPED: ("counter", (), "Predictions dropped from the inference log because its queue was full."),
}

FLOW_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    FLOW_LAST_RUN: ("gauge", ("flow", "outcome"), "Unix time a flow last finished, by outcome (completed / failed)."),
    FLOW_DURATION: ("gauge", ("flow",), "Wall time of the flow's last run in seconds."),
    PROMOTION_LAST: ("gauge", ("decision",), "Unix time of the last promotion decision, by decision."),
    CANDIDATE_SCORE: ("gauge", ("metric",), "Validation scores of the last promotion candidate."),
    PRODUCTION_SCORE: ("gauge", ("metric",), "Validation scores of the serving model in the same evaluation."),
}
