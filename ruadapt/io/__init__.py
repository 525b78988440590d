"""Reading and writing what the stages work on: checkpoints, output folders, corpora, chats, hub snapshots,
tokenizer folders, stage records, model cards. Nothing here knows about a stage."""
