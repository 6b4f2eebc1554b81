"""The judged benchmarks' official judge prompts, reproduced as data (MM1.5 §4.1, Tables 4–7
and 10; used by :mod:`mm15.eval.judged_tasks`).  Each text is quoted from the benchmark's own
evaluation script, named beside it; only the layout of the Python literals is ours.

* MathVista: the answer-extraction demo prompt (lupantech/MathVista,
  ``evaluation/prompts/ext_ans.py``; the same text in lmms-eval's
  ``lmms_eval/tasks/mathvista/mathvista_evals.py``), and the "format-prompt" hints lmms-eval's
  ``testmini`` task puts after the question.
* MM-Vet: the few-shot grader prompt and its retry suffix (yuweihao/MM-Vet,
  ``mm-vet_evaluator.py``).
* LLaVA-Bench (In-the-Wild): the reviewer system message and the ``llava_bench_*`` rules
  (haotian-liu/LLaVA, ``llava/eval/eval_gpt_review_bench.py`` and ``llava/eval/table/rule.json``).
* Ferret-Bench: the three rules (apple/ml-ferret, ``ferret/eval/ferret_gpt4_data/rule.json``);
  the system message is LLaVA's (``ferret/eval/eval_gpt_review_3newclass.py``).
* Open-ended video QA: the correctness prompt of Video-ChatGPT (mbzuai-oryx/Video-ChatGPT,
  ``quantitative_evaluation/evaluate_activitynet_qa.py``), which ActivityNet-QA in lmms-eval
  (``lmms_eval/tasks/activitynetqa/utils.py``) uses as well.
* VCGBench (Video-ChatGPT's video-based generative performance benchmark): the five prompts of
  mbzuai-oryx/Video-ChatGPT ``quantitative_evaluation/evaluate_benchmark_{1_correctness,
  2_detailed_orientation,3_context,4_temporal,5_consistency}.py`` (the same texts in lmms-eval's
  ``lmms_eval/tasks/videochatgpt/utils.py``), their typo ``{''score': 4.8}`` included.
* LLaVA-Hound video QA: the caption-grounded grader of RifleZhang/LLaVA-Hound-DPO
  (``dpo_experiment/test/eval/eval_qa.py``, sent without a system message by
  ``llava_hound_dpo/inference/chatgpt_inference.py``), after the repo's ``format_docstring``
  (``re.sub("\\n +", "\\n", text).strip()``), which leaves the text below.
"""

from __future__ import annotations

MATHVISTA_DEMO = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""

# lmms-eval mathvista_testmini, shot_type "format-prompt": the line after question and choices.
MATHVISTA_HINTS = {
    "multi_choice": "Answer with the option's letter from the given choices directly.",
    "integer": "Answer the question using a single integer number.",
    "float1": "Answer the question using a single floating-point number with one decimal place.",
    "float2": "Answer the question using a single floating-point number with two decimal places.",
    "list": "Answer the question using a Python list.",
}

MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "

REVIEWER_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

_PAIR_TAIL = (
    "\nPlease first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the "
    "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding "
    "any potential bias and ensuring that the order in which the responses were presented does "
    "not affect your judgment."
)
_LLAVA_BENCH = (
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above. The user asks the question on observing an image. For "
    "your reference, the visual content in the image is represented with a few sentences "
    "describing the image. \nPlease rate the helpfulness, relevance, accuracy, level of details "
    "of their responses. Each assistant receives an overall score on a scale of 1 to 10, where a "
    "higher score indicates better overall performance." + _PAIR_TAIL
)
# rule.json's three llava_bench_* entries are the same text.
LLAVA_RULES = {f"llava_bench_{c}": _LLAVA_BENCH for c in ("conv", "detail", "complex")}

_FERRET_CONTEXT = (
    "For your reference, the visual content in the image is represented with five descriptive "
    "sentences describing the same image. In addition, specific object locations within the "
    "image are given, along with detailed coordinates. These coordinates are in the form of "
    "bounding boxes, represented as (x1, y1, x2, y2) with floating numbers ranging from 0 to 1. "
    "These values correspond to the top left x, top left y, bottom right x, and bottom right y. "
    "Also, the relationships between pairs of objects are provided, in the format of object -> "
    "relationship -> subject, where the object/subject are indexed by object id from previous "
    "object lists as well as the object names. Also, several region description are given, each "
    "describing a box region of image, with detailed coordinates. \n"
)
_FERRET_HEAD = (
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above. "
)
_FERRET_REFER = (
    _FERRET_HEAD
    + "The user asks the question about specific region of an image. "
    + _FERRET_CONTEXT
    + "Please rate the spatial correspondence, helpfulness, relevance, accuracy, level of details "
    "of their responses. Each assistant receives an overall score on a scale of 1 to 10, where a "
    "higher score indicates better overall performance." + _PAIR_TAIL
)
FERRET_RULES = {
    "refer_desc": _FERRET_REFER,
    "refer_reason": _FERRET_REFER,
    "ground_conv": _FERRET_HEAD
    + "The user asks the question that requires model to predict the coordinates of relevant "
    "object. " + _FERRET_CONTEXT + "Please rate the predicted coordinates, helpfulness, "
    "relevance, accuracy, level of details of their responses. Specifically, pay your attention "
    "to the precision of the coordinates and whether it matches the object. Small deviation "
    "(<20% of ground-truth box width or height) of coordinates is allowed and shouldn't be "
    "punished. More than that, the degree of deviation should be reflected in scoring too.  Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
    "better overall performance." + _PAIR_TAIL,
}

VIDEOQA_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs "
    "for question-answer pairs. Your task is to compare the predicted answer with the correct "
    "answer and determine if they match meaningfully. Here's how you can accomplish the task:"
    "------##INSTRUCTIONS: - Focus on the meaningful match between the predicted answer and the "
    "correct answer.\n- Consider synonyms or paraphrases as valid matches.\n- Evaluate the "
    "correctness of the prediction compared to the answer."
)
VIDEOQA_USER = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\n"
    "Correct Answer: {answer}\nPredicted Answer: {pred}\n\nProvide your evaluation only as a "
    "yes/no and score where the score is an integer value between 0 and 5, with 5 indicating the "
    "highest meaningful match. Please generate the response in the form of a Python dictionary "
    "string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and "
    "value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR "
    "EXPLANATION. Only provide the Python dictionary string. For example, your response should "
    "look like this: {{'pred': 'yes', 'score': 4.8}}."
)

# VCGBench: one system message per dimension; the user message is the shared head, then the
# dimension's request (the consistency prompt shows two questions and two answers).
VCG_HEAD = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\n"
    "Correct Answer: {answer}\nPredicted Answer: {pred}\n\n"
)
VCG_CONSISTENCY_HEAD = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question 1: {question1}\nQuestion 2: {question2}\nCorrect Answer: {answer}\n"
    "Predicted Answer to Question 1: {pred1}\nPredicted Answer to Question 2: {pred2}\n\n"
)
_VCG_END = (
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary "
    "string. For example, your response should look like this: {{''score': 4.8}}."
)
_VCG_ROLE = (
    "You are an intelligent chatbot designed for evaluating the {what} of generative outputs for "
)
VCG_PROMPTS: dict[str, tuple[str, str]] = {  # dimension → (system, user request after the head)
    "correctness": (
        _VCG_ROLE.format(what="factual accuracy") + "video-based question-answer pairs. Your "
        "task is to compare the predicted answer with the correct answer and determine if they "
        "are factually consistent. Here's how you can accomplish the task:------##INSTRUCTIONS: "
        "- Focus on the factual consistency between the predicted answer and the correct answer. "
        "The predicted answer should not contain any misinterpretations or misinformation.\n"
        "- The predicted answer must be factually accurate and align with the video content.\n"
        "- Consider synonyms or paraphrases as valid matches.\n"
        "- Evaluate the factual accuracy of the prediction compared to the answer.",
        "Provide your evaluation only as a factual accuracy score where the factual accuracy "
        "score is an integer value between 0 and 5, with 5 indicating the highest level of "
        "factual consistency. Please generate the response in the form of a Python dictionary "
        "string with keys 'score', where its value is the factual accuracy score in INTEGER, not "
        "STRING." + _VCG_END,
    ),
    "detail_orientation": (
        _VCG_ROLE.format(what="detail orientation") + "video-based question-answer pairs. Your "
        "task is to compare the predicted answer with the correct answer and determine its level "
        "of detail, considering both completeness and specificity. Here's how you can accomplish "
        "the task:------##INSTRUCTIONS: - Check if the predicted answer covers all major points "
        "from the video. The response should not leave out any key aspects.\n"
        "- Evaluate whether the predicted answer includes specific details rather than just "
        "generic points. It should provide comprehensive information that is tied to specific "
        "elements of the video.\n"
        "- Consider synonyms or paraphrases as valid matches.\n"
        "- Provide a single evaluation score that reflects the level of detail orientation of "
        "the prediction, considering both completeness and specificity.",
        "Provide your evaluation only as a detail orientation score where the detail orientation "
        "score is an integer value between 0 and 5, with 5 indicating the highest level of "
        "detail orientation. Please generate the response in the form of a Python dictionary "
        "string with keys 'score', where its value is the detail orientation score in INTEGER, "
        "not STRING." + _VCG_END,
    ),
    "context": (
        _VCG_ROLE.format(what="contextual understanding") + "video-based question-answer pairs. "
        "Your task is to compare the predicted answer with the correct answer and determine if "
        "the generated response aligns with the overall context of the video content. Here's how "
        "you can accomplish the task:------##INSTRUCTIONS: - Evaluate whether the predicted "
        "answer aligns with the overall context of the video content. It should not provide "
        "information that is out of context or misaligned.\n"
        "- The predicted answer must capture the main themes and sentiments of the video.\n"
        "- Consider synonyms or paraphrases as valid matches.\n"
        "- Provide your evaluation of the contextual understanding of the prediction compared to "
        "the answer.",
        "Provide your evaluation only as a contextual understanding score where the contextual "
        "understanding score is an integer value between 0 and 5, with 5 indicating the highest "
        "level of contextual understanding. Please generate the response in the form of a Python "
        "dictionary string with keys 'score', where its value is contextual understanding score "
        "in INTEGER, not STRING." + _VCG_END,
    ),
    "temporal": (
        _VCG_ROLE.format(what="temporal understanding") + "video-based question-answer pairs. "
        "Your task is to compare the predicted answer with the correct answer and determine if "
        "they correctly reflect the temporal sequence of events in the video content. Here's how "
        "you can accomplish the task:------##INSTRUCTIONS: - Focus on the temporal consistency "
        "between the predicted answer and the correct answer. The predicted answer should "
        "correctly reflect the sequence of events or details as they are presented in the video "
        "content.\n"
        "- Consider synonyms or paraphrases as valid matches, but only if the temporal order is "
        "maintained.\n"
        "- Evaluate the temporal accuracy of the prediction compared to the answer.",
        "Provide your evaluation only as a temporal accuracy score where the temporal accuracy "
        "score is an integer value between 0 and 5, with 5 indicating the highest level of "
        "temporal consistency. Please generate the response in the form of a Python dictionary "
        "string with keys 'score', where its value is the temporal accuracy score in INTEGER, not "
        "STRING." + _VCG_END,
    ),
    "consistency": (
        _VCG_ROLE.format(what="consistency") + "similar video-based question-answer pairs. You "
        "will be given two very similar questions, a common answer common to both the questions "
        "and predicted answers for the two questions .Your task is to compare the predicted "
        "answers for two very similar question, with a common correct answer and determine if "
        "they are consistent. Here's how you can accomplish the task:------##INSTRUCTIONS: "
        "- Focus on the consistency between the two predicted answers and the correct answer. "
        "Both predicted answers should correspond to the correct answer and to each other, and "
        "should not contain any contradictions or significant differences in the conveyed "
        "information.\n"
        "- Both predicted answers must be consistent with each other and the correct answer, in "
        "terms of the information they provide about the video content.\n"
        "- Consider synonyms or paraphrases as valid matches, but only if they maintain the "
        "consistency in the conveyed information.\n"
        "- Evaluate the consistency of the two predicted answers compared to the correct answer.",
        "Provide your evaluation only as a consistency score where the consistency score is an "
        "integer value between 0 and 5, with 5 indicating the highest level of consistency. "
        "Please generate the response in the form of a Python dictionary string with keys "
        "'score', where its value is the consistency score in INTEGER, not STRING." + _VCG_END,
    ),
}

HOUND_PROMPT = """Given the following inputs:

1. **Ground Truth Video Caption**: {caption}
2. **Question Related to the Caption**: {question}
3. **Ground Truth Answer**: {answer}
4. **Model Predicted Answer**: {prediction}

Your task is to evaluate the model's predicted answer against the ground truth answer, based on the context provided by the video caption and the question. Consider the following criteria for evaluation:

- **Relevance**: Does the predicted answer directly address the question posed, considering the information provided in the video caption?
- **Accuracy**: Compare the predicted answer to the ground truth answer. Does the prediction accurately reflect the information given in the ground truth answer without introducing factual inaccuracies?
- **Clarity**: Assess the clarity of the predicted answer. Look for issues such as repetition, unclear descriptions, or any grammatical errors that could hinder understanding.
- **Completeness**: Determine if the predicted answer fully covers the scope of the ground truth answer. Does it leave out critical information or does it include all necessary details?

**Output Format**:
Explanation: <brief judgement of prediction>
Score: <an integer score of quality from 1-5>"""
