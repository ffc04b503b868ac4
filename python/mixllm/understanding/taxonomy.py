"""mixllm's built-in taxonomy of query domains: 20 coarse domains, each a name, a one-line
description and a few seed queries, all written for this project.

The MixLLM paper groups InsTag's fine-grained tags into 20 coarse domains by hand; this list
plays that part for the zero-shot tagger (:class:`mixllm.understanding.tagging.Tagger`), which
compares a query with each domain's prototype (the mean of its embedded description and seeds). The
seeds are deliberately varied in form (questions, instructions, multiple choice) so a prototype
captures the topic rather than a phrasing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DOMAINS", "Domain"]


@dataclass(frozen=True)
class Domain:
    """One domain of the taxonomy."""

    name: str
    description: str
    seeds: tuple[str, ...]


DOMAINS: tuple[Domain, ...] = (
    Domain(
        "mathematics",
        "Arithmetic, algebra, geometry, calculus, probability and proofs.",
        (
            "Solve for x: 3x + 7 = 22.",
            "What is the derivative of sin(x) times x squared?",
            "Prove that there are infinitely many prime numbers.",
            "A bag holds 4 red and 6 blue marbles; what is the chance of drawing two red ones?",
            "Find the area of a triangle with sides 5, 12 and 13.",
        ),
    ),
    Domain(
        "programming",
        "Writing, fixing and explaining source code in a programming language.",
        (
            "Write a Python function that returns the n-th Fibonacci number.",
            "Why does my JavaScript loop print the same value every time?",
            "Implement binary search over a sorted list of integers.",
            "Refactor this Java class so that it follows the builder pattern.",
            "Write a function to count the vowels in a given string.",
        ),
    ),
    Domain(
        "computer_science",
        "Algorithms, complexity, operating systems, networks, databases and computer hardware.",
        (
            "What is the time complexity of quicksort in the worst case?",
            "Explain how TCP differs from UDP.",
            "How does virtual memory work in an operating system?",
            "What is a B-tree index and why do databases use it?",
            "Describe what a CPU cache miss is.",
        ),
    ),
    Domain(
        "data_science",
        "Statistics, machine learning, data analysis and visualisation.",
        (
            "How do I choose the number of clusters for k-means?",
            "What is the difference between precision and recall?",
            "Explain overfitting and how regularisation helps.",
            "Which chart should I use to compare monthly sales across regions?",
            "How do I compute a 95% confidence interval for a mean?",
        ),
    ),
    Domain(
        "physics",
        "Forces, motion, energy, electricity, waves, light and the structure of matter.",
        (
            "Why does a ball thrown upward slow down as it rises?",
            "What happens to the current when the resistance in a circuit doubles?",
            "Explain why the sky looks blue during the day.",
            "How much kinetic energy does a 2 kg object moving at 3 m/s have?",
            "Which kind of wave needs a medium to travel through, sound or light?",
        ),
    ),
    Domain(
        "chemistry",
        "Elements, compounds, reactions, mixtures, acids and bases, states of matter.",
        (
            "Balance the equation for burning methane in oxygen.",
            "Is dissolving salt in water a physical or a chemical change?",
            "What is the pH of a neutral solution?",
            "Why does iron rust when it is left outside?",
            "How many electrons does a carbon atom have?",
        ),
    ),
    Domain(
        "biology",
        "Living things: cells, genetics, evolution, ecosystems, plants and animals.",
        (
            "What is the role of chlorophyll in photosynthesis?",
            "How do offspring inherit traits from their parents?",
            "Which organelle produces most of a cell's energy?",
            "Why do some animals hibernate in winter?",
            "Describe a food chain in a pond ecosystem.",
        ),
    ),
    Domain(
        "medicine_health",
        "Human health, diseases, symptoms, treatments, nutrition and fitness.",
        (
            "What are the early signs of type 2 diabetes?",
            "Is it safe to take ibuprofen together with paracetamol?",
            "How much protein should an adult eat each day?",
            "What does a high white blood cell count mean?",
            "Suggest a beginner's routine to improve running endurance.",
        ),
    ),
    Domain(
        "earth_environment",
        "Geology, weather, climate, oceans, natural resources and the solar system.",
        (
            "What causes earthquakes along plate boundaries?",
            "Why do we have seasons on Earth?",
            "How are sedimentary rocks formed?",
            "What is the greenhouse effect?",
            "Why does the Moon show phases over a month?",
        ),
    ),
    Domain(
        "law",
        "Legal questions: contracts, rights, regulations, courts and liability.",
        (
            "Can my landlord keep my deposit for normal wear and tear?",
            "What is the difference between a misdemeanour and a felony?",
            "Does a verbal agreement count as a binding contract?",
            "What does the GDPR require when a company stores personal data?",
            "How does copyright apply to photos posted online?",
        ),
    ),
    Domain(
        "business_finance",
        "Companies, markets, investing, accounting, economics and personal money.",
        (
            "How do index funds differ from actively managed funds?",
            "Explain what a balance sheet shows.",
            "What happens to bond prices when interest rates rise?",
            "Write a short pitch for a subscription meal-kit startup.",
            "How does inflation affect my savings?",
        ),
    ),
    Domain(
        "history",
        "Past events, civilisations, wars, historical figures and how societies changed.",
        (
            "What were the main causes of the First World War?",
            "Who built the pyramids of Giza and when?",
            "How did the printing press change Europe?",
            "Summarise the history of the Roman Republic.",
            "Why did the Soviet Union collapse?",
        ),
    ),
    Domain(
        "geography_travel",
        "Countries, cities, maps, landmarks, cultures and planning trips.",
        (
            "What is the capital of Australia?",
            "Plan a three-day itinerary for Lisbon.",
            "Which river flows through Cairo?",
            "What should I pack for a week of hiking in Iceland?",
            "Which countries share a border with Switzerland?",
        ),
    ),
    Domain(
        "language_literature",
        "Grammar, word meanings, translation, linguistics and the study of books and poems.",
        (
            "Translate 'where is the station' into German.",
            "What is the difference between 'affect' and 'effect'?",
            "Explain the theme of guilt in Macbeth.",
            "Is this sentence grammatically correct: 'Me and him went home'?",
            "What does the idiom 'to bite the bullet' mean?",
        ),
    ),
    Domain(
        "creative_writing",
        "Stories, poems, jokes, dialogue, slogans and other original writing.",
        (
            "Write a short poem about autumn rain.",
            "Tell me a bedtime story about a brave little turtle.",
            "Come up with five names for a coffee shop.",
            "Write a funny dialogue between a cat and a vacuum cleaner.",
            "Draft the opening paragraph of a mystery novel.",
        ),
    ),
    Domain(
        "commonsense_reasoning",
        "Everyday situations, what people would do or feel, cause and effect, and which word "
        "or choice fits a sentence.",
        (
            "Sam lent Alex his umbrella because _ had forgotten one. Who had forgotten one?",
            "The glass fell off the table and shattered. What most likely happened next?",
            "Maria was tired, so she went to bed early instead of finishing the film.",
            "If you leave ice cream in the sun, what happens to it?",
            "The dog could not fit through the door because it was too big. What was too big?",
        ),
    ),
    Domain(
        "philosophy_religion",
        "Ethics, the nature of knowledge and mind, and religious beliefs and practices.",
        (
            "Is it ever right to lie to protect someone?",
            "What did Kant mean by the categorical imperative?",
            "Do we have free will if the universe is deterministic?",
            "What are the five pillars of Islam?",
            "Explain the trolley problem and the main answers to it.",
        ),
    ),
    Domain(
        "arts_entertainment",
        "Music, film, television, games, sports, visual art and celebrities.",
        (
            "Recommend some films similar to Inception.",
            "Who won the football World Cup in 2014?",
            "What chords are used in a twelve-bar blues?",
            "Explain the rules of chess castling.",
            "Which painter is known for The Starry Night?",
        ),
    ),
    Domain(
        "daily_life",
        "Cooking, home, shopping, relationships, parenting, pets and personal productivity.",
        (
            "How long should I boil an egg for a runny yolk?",
            "How do I get a red wine stain out of a carpet?",
            "Give me tips for getting a toddler to sleep through the night.",
            "How can I stop procrastinating when working from home?",
            "What is a polite way to decline a wedding invitation?",
        ),
    ),
    Domain(
        "politics_society",
        "Government, elections, public policy, social issues and current affairs.",
        (
            "How does the US Electoral College work?",
            "What are the arguments for and against a universal basic income?",
            "Explain the separation of powers in a parliamentary democracy.",
            "Why do some countries have compulsory voting?",
            "What causes income inequality to grow?",
        ),
    ),
)
