"""`llmops eval`: run a dataset against targets (models, route variants, prompt versions, any OpenAI-compatible
endpoint), score each answer, and report means with bootstrap confidence intervals and paired comparisons.

    dataset.py  rows (JSONL) and the eval spec (YAML), with line-numbered errors
    targets.py  what is asked, over HTTP with the official openai client
    scorers.py  exact, contains, regex, JSON, numeric; embedding.py and judge.py ask a model
    runner.py   bounded concurrency, results appended per row, resumable
    stats.py    bootstrap CI, paired sign-flip permutation and Wilcoxon tests
    report.py   summary, markdown, JSON; chart.py the PNG
    online.py   live traffic scored in the background (llmops_eval_score)
    cli.py      `llmops eval run | report | compare`
"""
