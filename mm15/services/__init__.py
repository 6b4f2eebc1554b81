"""What the verbs (:mod:`mm15.cli`), the server and evaluation call to use a trained model:
checkpoints (:mod:`.checkpoint`), generation over the input pipeline (:mod:`.inference`), a chat
session with regions and drawing (:mod:`.chat_session`), inference-time image settings
(:mod:`.image_settings`) and device choice (:mod:`.devices`)."""
