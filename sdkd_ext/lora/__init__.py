"""LoRAs for SD1.5 teachers and BK-SDM students: names (kohya/diffusers/peft), files, training, applying, porting."""
