"""The built-in prompt corpus of ``implicit-icl explain --corpus``: 120 short English texts written for this project.

Varied on purpose, so that no statistic rests on one sentence: analogies in the paper's "A is to B as C is to"
form, facts, lists and sequences, questions, instructions, and everyday sentences, 4 to 20 words each, no two
alike. Nothing is downloaded; the order is fixed (``--prompts N`` takes the first N), so the kinds are interleaved.
"""
from __future__ import annotations

ANALOGIES = (
    "France is to Paris as Japan is to",
    "Man is to king as woman is to",
    "Hot is to cold as up is to",
    "Bird is to fly as fish is to",
    "Dog is to puppy as cat is to",
    "Germany is to Berlin as Italy is to",
    "Eye is to see as ear is to",
    "Day is to night as summer is to",
    "Pen is to write as knife is to",
    "Water is to drink as bread is to",
    "Doctor is to hospital as teacher is to",
    "Big is to small as fast is to",
    "Spain is to Spanish as Brazil is to",
    "Glove is to hand as shoe is to",
    "Painter is to brush as writer is to",
    "One is to two as three is to",
    "Cow is to milk as bee is to",
    "Tree is to forest as star is to",
    "Egypt is to Cairo as Kenya is to",
    "Book is to read as song is to",
)

FACTS = (
    "The capital of Canada is Ottawa.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The Earth orbits the Sun once every year.",
    "Mount Everest is the highest mountain on Earth.",
    "The Pacific is the largest ocean in the world.",
    "Shakespeare wrote Hamlet and Macbeth.",
    "A triangle has three sides and three angles.",
    "The heart pumps blood through the body.",
    "Light travels faster than sound.",
    "The Amazon river flows through Brazil.",
    "Penguins live in the southern hemisphere.",
    "The moon has no light of its own.",
    "Gold is a soft and heavy metal.",
    "The Nile is one of the longest rivers on Earth.",
    "Plants make sugar from sunlight, water and air.",
    "The chemical symbol for iron is Fe.",
    "A week has seven days.",
    "Tokyo is the largest city in Japan.",
    "The violin has four strings.",
    "Ice floats because it is lighter than water.",
)

LISTS = (
    "Monday, Tuesday, Wednesday, Thursday,",
    "one, two, three, four, five,",
    "red, orange, yellow, green, blue,",
    "January, February, March, April,",
    "apples, pears, plums, cherries and",
    "north, east, south and",
    "a, b, c, d, e, f,",
    "2, 4, 6, 8, 10,",
    "spring, summer, autumn and",
    "Mercury, Venus, Earth, Mars,",
    "salt, pepper, oil and vinegar",
    "first, second, third, fourth,",
    "piano, guitar, drums and violin",
    "London, Paris, Rome, Madrid,",
    "cats, dogs, horses and rabbits",
    "breakfast, lunch and dinner",
    "ten, twenty, thirty, forty,",
    "lions, tigers and bears",
    "bread, butter, cheese and jam",
    "Alice, Bob, Carol and Dave",
)

QUESTIONS = (
    "What is the capital of Australia?",
    "How many legs does a spider have?",
    "Who painted the Mona Lisa?",
    "Why is the sky blue during the day?",
    "Where do polar bears live?",
    "When did the Second World War end?",
    "Which planet is closest to the Sun?",
    "How long does it take to boil an egg?",
    "What do bees make from flowers?",
    "Can you tell me the way to the station?",
    "Is it going to rain tomorrow morning?",
    "What language do people speak in Mexico?",
    "How far is the moon from the Earth?",
    "Who wrote the theory of relativity?",
    "What time does the train leave?",
    "Do you know where my keys are?",
    "How many minutes are in an hour?",
    "What is the opposite of happy?",
    "Which animal is the largest on land?",
    "Where was the first Olympic Games held?",
)

INSTRUCTIONS = (
    "Translate good morning into French.",
    "Add two and three, then multiply by four.",
    "Write a short poem about the sea.",
    "Sort these numbers from small to large.",
    "Close the door when you leave the room.",
    "Please summarise the article in one sentence.",
    "Turn left at the second traffic light.",
    "Mix the flour with the eggs and the milk.",
    "Name three colours of the rainbow.",
    "Spell the word necessary letter by letter.",
    "Count backwards from ten to one.",
    "Find the odd one out: apple, banana, car, grape.",
    "Repeat after me: the quick brown fox.",
    "Complete the sentence: the early bird catches the",
    "Give an example of a prime number.",
    "Explain why leaves change colour in autumn.",
    "Put the books back on the shelf.",
    "Call me when you arrive at the hotel.",
    "List the days of the weekend.",
    "Describe the taste of a lemon.",
)

SENTENCES = (
    "The cat sat on the mat and watched the birds.",
    "She opened the window to let the fresh air in.",
    "My brother plays football every Saturday afternoon.",
    "The old man walked slowly along the beach.",
    "We missed the bus, so we walked home in the rain.",
    "The children laughed at the clown in the park.",
    "He forgot his umbrella at the office again.",
    "The coffee was too hot to drink.",
    "After dinner they watched a film together.",
    "The library closes at eight in the evening.",
    "A small boat drifted across the quiet lake.",
    "The baby finally fell asleep after midnight.",
    "Our neighbours painted their house bright yellow.",
    "The train was late because of the snow.",
    "I think the meeting went very well.",
    "The dog barked at the postman every morning.",
    "They planted tomatoes and beans in the garden.",
    "The museum was full of tourists in August.",
    "Her phone rang in the middle of the concert.",
    "The bread in this shop is baked every morning.",
)

#: The corpus, kinds interleaved (analogy, fact, list, question, instruction, sentence, analogy, …).
PROMPTS: tuple[str, ...] = tuple(
    text for group in zip(ANALOGIES, FACTS, LISTS, QUESTIONS, INSTRUCTIONS, SENTENCES) for text in group)
