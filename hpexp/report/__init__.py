"""Reports: run directories and studies as DataFrames, statistics, figures and pages.

Loaders return DataFrames (`load_runs`, `load_trials`), `compare` compares configurations by the
design of the experiment (paired by seed, else Welch) and words the verdict, plot functions take a
DataFrame and return Axes (`interactive` draws the same as plotly figures for report.html), and
`pages` writes `reports/<name>/` (README.md, report.html, figures/, tables/).
"""

from hpexp._lazy import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "load_runs": "runs",
        "run_metrics": "runs",
        "summarize": "runs",
        "epoch_stats": "runs",
        "label_configs": "runs",
        "varying_keys": "runs",
        "load_trials": "runs",
        "load_trial_curves": "runs",
        "param_importances": "runs",
        "open_study": "runs",
        "ReportError": "runs",
        "search_space_log": "runs",
        "fetch_run_dirs": "runs",
        "missing_run_dirs": "runs",
        "verdict": "compare",
        "add_reference": "plots",
        "plot_parallel_coordinates": "plots",
        "write_plotly_asset": "pages",
        "plot_learning_curves": "plots",
        "plot_gap": "plots",
        "plot_overfitting": "plots",
        "plot_accuracy_vs_n_train": "plots",
        "plot_optimization_history": "plots",
        "plot_trial_curves": "plots",
        "plot_param_importances": "plots",
        "plot_slices": "plots",
        "plot_param_map": "plots",
        "Page": "pages",
        "runs_page": "pages",
        "study_page": "pages",
        "write_page": "pages",
    },
)
