"""adaclip_rl.trainers"""
